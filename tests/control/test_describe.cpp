// The protocol's description (control/protocol_schema.hpp) against what the JSON-RPC layer does
// and what docs/control-protocol.md says: system.describe lists every method and event; every
// integer parameter's range, multiple and default are the ones a request meets; events.subscribe's
// filter; the document names the same methods, events and pools as the schema.
#include <catch2/catch.hpp>

#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "control/json_rpc.hpp"
#include "control/protocol_schema.hpp"
#include "fake_api.hpp"

using nlohmann::json;
using namespace lparvisor;
using namespace lparvisor::control;

namespace {

json call(test::FakeApi& api, const json& request) {
    const std::string response = handle_line(api, request.dump());
    REQUIRE(!response.empty());
    return json::parse(response);
}

json request(std::string_view method, json params) {
    return json{{"jsonrpc", "2.0"}, {"id", 1}, {"method", method}, {"params", std::move(params)}};
}

// Params with every required parameter of `method` at a valid value (names "LPAR1", integers at
// their minimum).
json required_params(const MethodSchema& method) {
    json params = json::object();
    for (const ParamSchema& param : method.params) {
        if (!param.required) continue;
        if (param.type == ParamType::Name) params[std::string(param.name)] = "LPAR1";
        if (param.type == ParamType::Integer) params[std::string(param.name)] = param.min;
    }
    return params;
}

// The request is refused as bad params, naming `param`.
void refused_naming(test::FakeApi& api, const json& req, std::string_view param) {
    const json response = call(api, req);
    INFO(req.dump() << " -> " << response.dump());
    REQUIRE(response.contains("error"));
    CHECK(response.at("error").at("code") == -32602);
    CHECK(response.at("error").at("data").at("param") == param);
}

// The request got past parameter validation (the fake Api may still refuse it, never as -32602).
void accepted(test::FakeApi& api, const json& req) {
    const json response = call(api, req);
    INFO(req.dump() << " -> " << response.dump());
    if (response.contains("error")) CHECK(response.at("error").at("code") != -32602);
}

// The first group of every match of `pattern` in `text`.
std::set<std::string> captures(const std::string& text, const std::regex& pattern) {
    std::set<std::string> out;
    for (std::sregex_iterator it(text.begin(), text.end(), pattern), end; it != end; ++it)
        out.insert((*it)[1]);
    return out;
}

// The dotted names (methods, events) in backticks in `text`.
std::set<std::string> backticked(const std::string& text) {
    static const std::regex kName("`([a-z_]+\\.[a-z_]+)`");
    return captures(text, kName);
}

// The field names in backticks (no dot) in `text`.
std::set<std::string> backticked_fields(const std::string& text) {
    static const std::regex kField("`([a-z_]+)`");
    return captures(text, kField);
}

std::string read_document() {
    std::ifstream in(LPARVISOR_PROTOCOL_DOC);
    REQUIRE(in.good());
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
}

// The lines of `text` from the one that starts with `first` to the next line that starts with
// `stop` (or the end).
std::string section(const std::string& text, const std::string& first, const std::string& stop) {
    const auto begin = text.find("\n" + first);
    REQUIRE(begin != std::string::npos);
    const auto end = text.find("\n" + stop, begin + 1 + first.size());
    return text.substr(begin, end == std::string::npos ? std::string::npos : end - begin);
}

}  // namespace

TEST_CASE("system.describe lists every method with its parameters and every event", "[describe]") {
    test::FakeApi api;
    const json result =
        call(api, json{{"jsonrpc", "2.0"}, {"id", 1}, {"method", "system.describe"}}).at("result");
    REQUIRE(result.at("methods").size() == std::size(kMethodSchemas));
    REQUIRE(result.at("events").size() == std::size(kEventSchemas));
    CHECK(result.at("common_event_fields") == json{"event", "lpar", "time", "monotonic_us"});
    std::set<std::string> names;
    for (const json& method : result.at("methods")) {
        const std::string name = method.at("name");
        names.insert(name);
        const MethodSchema* schema = find_method_schema(name);
        REQUIRE(schema != nullptr);
        REQUIRE(method.at("params").size() == schema->params.size());
        CHECK(!method.at("summary").get<std::string>().empty());
        // Every described method is one the parser knows: never "method not found".
        const json response = call(api, request(name, required_params(*schema)));
        INFO(name << " -> " << response.dump());
        if (response.contains("error")) CHECK(response.at("error").at("code") != -32601);
    }
    CHECK(names.size() == std::size(kMethodSchemas));  // no name twice
    const json mvstor = result.at("methods").at(1);
    REQUIRE(mvstor.at("name") == "storage.mvstor");
    CHECK(mvstor.at("runs") == "long");
    CHECK(mvstor.at("params").at(2) ==
          json{{"name", "timeout_ms"},
               {"type", "integer"},
               {"required", false},
               {"min", 1},
               {"max", 600000},
               {"default", 10000},
               {"description", schema_detail::kMvstor[2].description}});
    CHECK(mvstor.at("params").at(3).at("choices") == json{"stop-and-copy", "live"});
    CHECK(mvstor.at("params").at(3).at("default") == "stop-and-copy");
    const json& lpar_state = result.at("events").at(0);
    CHECK(lpar_state.at("name") == "lpar.state");
    CHECK(lpar_state.at("fields").at(0).at("name") == "state");
}

TEST_CASE("every integer parameter's range, multiple and default are the schema's", "[describe]") {
    test::FakeApi api;
    unsigned checked = 0;
    for (const MethodSchema& method : kMethodSchemas) {
        for (const ParamSchema& param : method.params) {
            if (param.type != ParamType::Integer) continue;
            const std::string key(param.name);
            json params = required_params(method);
            params[key] = param.min;
            accepted(api, request(method.name, params));
            if (param.min > 0) {
                params[key] = param.min - 1;
                refused_naming(api, request(method.name, params), key);
            }
            if (param.max < std::numeric_limits<std::uint64_t>::max()) {
                params[key] = param.max + 1;
                refused_naming(api, request(method.name, params), key);
            }
            if (param.multiple_of > 1) {
                params[key] = param.min + 1;
                refused_naming(api, request(method.name, params), key);
            }
            params[key] = -1;
            refused_naming(api, request(method.name, params), key);
            params[key] = "1";
            refused_naming(api, request(method.name, params), key);
            if (param.required) {
                params.erase(key);
                refused_naming(api, request(method.name, params), key);
            }
            ++checked;
        }
    }
    CHECK(checked >= 20);  // the table has that many integer parameters; a loop that ran dry fails

    // The defaults reach the Api: storage.mvstor without the optional parameters.
    accepted(api, request("storage.mvstor", {{"lpar", "LPAR2"}, {"origin_mib", 192}}));
    REQUIRE(!api.mvstor_requests.empty());
    const auto& mvstor = api.mvstor_requests.back();
    CHECK(mvstor.drain_timeout.count() == static_cast<long>(schema_detail::kMvstor[2].fallback));
    CHECK(mvstor.policy.max_rounds == schema_detail::kMvstor[5].fallback);
}

TEST_CASE("events.subscribe takes a filter of known events and any LPARs", "[describe]") {
    test::FakeApi api;
    const json ok = call(api, request("events.subscribe",
                                      {{"events", {"mvstor.*", "lpar.state"}}, {"lpars", {"A"}}}));
    CHECK(ok.at("result").at("filter") ==
          json{{"events", {"mvstor.*", "lpar.state"}}, {"lpars", {"A"}}});
    refused_naming(api, request("events.subscribe", {{"events", {"mvstor.dnoe"}}}), "events");
    refused_naming(api, request("events.subscribe", {{"events", {"nothing.*"}}}), "events");
    refused_naming(api, request("events.subscribe", {{"events", {".*"}}}), "events");
    refused_naming(api, request("events.subscribe", {{"events", "lpar.state"}}), "events");
    refused_naming(api, request("events.subscribe", {{"events", {1}}}), "events");
    refused_naming(api, request("events.subscribe", {{"lpars", {""}}}), "lpars");
    refused_naming(api, request("events.subscribe", {{"lpars", {std::string(200, 'x')}}}), "lpars");
    json many = json::array();
    for (std::size_t i = 0; i <= kMaxFilterEntries; ++i) many.push_back("L" + std::to_string(i));
    refused_naming(api, request("events.subscribe", {{"lpars", many}}), "lpars");
    refused_naming(api, request("events.unsubscribe", {{"events", {"lpar.state"}}}), "events");

    EventFilter filter{{"mvstor.*", "lpar.state"}, {"A", "B"}};
    CHECK(filter.matches({"mvstor.phase", "A", "{}"}));
    CHECK(filter.matches({"lpar.state", "B", "{}"}));
    CHECK(!filter.matches({"lpar.state", "C", "{}"}));
    CHECK(!filter.matches({"storage.expanded", "A", "{}"}));
    CHECK(!filter.matches({"mvstorx", "A", "{}"}));
    CHECK(EventFilter{}.matches({"anything", "", "{}"}));
    CHECK(EventFilter{{}, {"A"}}.matches({"exchange.done", "A", "{}"}));
}

TEST_CASE("docs/control-protocol.md names the schema's methods, events and pools", "[describe]") {
    const std::string document = read_document();

    std::set<std::string> documented_methods;
    std::istringstream methods(section(document, "## Methods", "## "));
    for (std::string line; std::getline(methods, line);) {
        if (line.rfind("### ", 0) == 0) documented_methods.merge(backticked(line));
    }
    std::set<std::string> schema_methods;
    for (const auto& method : kMethodSchemas) schema_methods.emplace(method.name);
    CHECK(documented_methods == schema_methods);

    // The events table: the rows after its header line "| event | ...", up to a blank line.
    const std::string events_table = section(document, "| event |", "\n");
    std::set<std::string> documented_events;
    std::istringstream rows(events_table);
    for (std::string line; std::getline(rows, line);) {
        const auto first_cell_end = line.find('|', 1);
        if (line.rfind("| `", 0) == 0)
            documented_events.merge(backticked(line.substr(0, first_cell_end)));
    }
    std::set<std::string> schema_events;
    for (const auto& event : kEventSchemas) schema_events.emplace(event.name);
    CHECK(documented_events == schema_events);

    // Each row's fields are its events' fields: the backticked names before the row's colon
    // (what parentheses say about a field's values aside), or "the `METHOD` result's fields"
    // (but `lpar`, where the row says so), which are that result's own JSON.
    const std::map<std::string, json> results = {
        {"storage.mvstor", to_json(MvstorResult{})},
        {"storage.exchange", to_json(ExchangeResult{})},
        {"storage.expand", to_json(ResizeResult{})},
    };
    std::istringstream table(events_table);
    for (std::string line; std::getline(table, line);) {
        if (line.rfind("| `", 0) != 0) continue;
        const auto first_cell_end = line.find('|', 1);
        const std::string names = line.substr(0, first_cell_end);
        std::string fields_cell = line.substr(first_cell_end + 1);
        INFO(line);
        std::set<std::string> documented_fields;
        if (const auto at = fields_cell.find(" result's fields"); at != std::string::npos) {
            const auto method = backticked(fields_cell.substr(0, at));
            REQUIRE(!method.empty());
            REQUIRE(results.count(*method.begin()) == 1);
            for (const auto& [key, value] : results.at(*method.begin()).items())
                documented_fields.insert(key);
            if (fields_cell.find("but `lpar`") != std::string::npos)
                documented_fields.erase("lpar");
        } else {
            fields_cell = std::regex_replace(fields_cell, std::regex("\\([^)]*\\)"), "");
            documented_fields = backticked_fields(fields_cell.substr(0, fields_cell.find(':')));
        }
        for (const auto& name : backticked(names)) {
            const EventSchema* schema = find_event_schema(name);
            REQUIRE(schema != nullptr);
            std::set<std::string> schema_fields;
            for (const auto& field : schema->fields) schema_fields.emplace(field.name);
            CHECK(documented_fields == schema_fields);
        }
    }

    // "Where calls run": each pool's list is the schema's.
    const std::string pools = section(document, "## Where calls run", "## ");
    const auto listed = [&](const std::string& opening) {
        const auto begin = pools.find(opening);
        REQUIRE(begin != std::string::npos);
        const auto end = pools.find(')', begin);
        return backticked(pools.substr(begin, end - begin));
    };
    std::set<std::string> query, long_running;
    for (const auto& method : kMethodSchemas) {
        if (method.execution == Execution::Query) query.emplace(method.name);
        if (method.execution == Execution::LongRunning) long_running.emplace(method.name);
    }
    CHECK(listed("Query calls (") == query);
    CHECK(listed("long calls (") == long_running);
}
