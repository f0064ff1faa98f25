// The JSON-RPC core against the test-double Api: every error path, ids, notifications, params.
#include <catch2/catch.hpp>

#include <string>

#include <nlohmann/json.hpp>

#include "control/json_rpc.hpp"
#include "fake_api.hpp"

using nlohmann::json;
using namespace lparvisor;
using namespace lparvisor::control;

namespace {

json call(test::FakeApi& api, std::string_view line) {
    const std::string response = handle_line(api, line);
    REQUIRE(!response.empty());
    REQUIRE(response.find('\n') == std::string::npos);  // one response, one line
    return json::parse(response);
}

// The error object of a response, after checking the envelope.
json error_of(const json& response) {
    REQUIRE(response.at("jsonrpc") == "2.0");
    REQUIRE(response.contains("error"));
    REQUIRE(!response.contains("result"));
    return response.at("error");
}

int code_of(test::FakeApi& api, std::string_view line) {
    return error_of(call(api, line)).at("code").get<int>();
}

std::string message_of(test::FakeApi& api, std::string_view line) {
    return error_of(call(api, line)).at("message").get<std::string>();
}

std::string mvstor_with(std::string_view params) {
    return std::string(R"({"jsonrpc":"2.0","id":7,"method":"storage.mvstor","params":)") +
           std::string(params) + "}";
}

}  // namespace

TEST_CASE("lpar.list returns the status in the documented shape", "[json_rpc]") {
    test::FakeApi api;
    api.status.lpars[1].state = "stopped";
    api.status.lpars[1].reason = "guest exit 0";
    const json response = call(api, R"({"jsonrpc":"2.0","id":1,"method":"lpar.list"})");
    CHECK(response.at("id") == 1);
    const json& result = response.at("result");
    CHECK(result.at("main_storage_mib") == 509);
    CHECK(result.at("free_mib") == 125);
    REQUIRE(result.at("lpars").size() == 2);
    CHECK(result.at("lpars")[1] == json{{"name", "LPAR2"},
                                        {"origin_mib", 128},
                                        {"size_mib", 256},
                                        {"gap_mib", 125},
                                        {"state", "stopped"},
                                        {"has_storage", true},
                                        {"reason", "guest exit 0"},
                                        {"vcpus", 2},
                                        {"guest", "firmware"},
                                        {"max_size_mib", 256},
                                        {"plugged_mib", 0}});
    CHECK(api.list_calls == 1);

    // An LPAR that can grow, partly expanded, running Linux.
    api.status.lpars[0].guest = "linux";
    api.status.lpars[0].max_size_mib = 512;
    api.status.lpars[0].plugged_mib = 64;
    const json row =
        call(api, R"({"jsonrpc":"2.0","id":2,"method":"lpar.list"})").at("result").at("lpars")[0];
    CHECK(row.at("guest") == "linux");
    CHECK(row.at("max_size_mib") == 512);
    CHECK(row.at("plugged_mib") == 64);
}

TEST_CASE("params may be omitted or empty for lpar.list, but not unknown", "[json_rpc]") {
    test::FakeApi api;
    CHECK(call(api, R"({"jsonrpc":"2.0","id":1,"method":"lpar.list","params":{}})")
              .contains("result"));
    const json error =
        error_of(call(api, R"({"jsonrpc":"2.0","id":1,"method":"lpar.list","params":{"x":1}})"));
    CHECK(error.at("code") == -32602);
    CHECK(error.at("message") == "x: unknown parameter");
    CHECK(error.at("data").at("param") == "x");
    CHECK(code_of(api, R"({"jsonrpc":"2.0","id":1,"method":"lpar.list","params":[]})") == -32602);
    CHECK(code_of(api, R"({"jsonrpc":"2.0","id":1,"method":"lpar.list","params":null})") == -32602);
}

TEST_CASE("storage.mvstor passes typed params and serializes the result", "[json_rpc]") {
    test::FakeApi api;
    const json response = call(api, mvstor_with(R"({"lpar":"LPAR2","origin_mib":192})"));
    REQUIRE(api.mvstor_requests.size() == 1);
    CHECK(api.mvstor_requests[0].lpar == "LPAR2");
    CHECK(api.mvstor_requests[0].origin_mib == 192);
    CHECK(api.mvstor_requests[0].drain_timeout == std::chrono::milliseconds(10000));
    const json& result = response.at("result");
    CHECK(result.at("lpar") == "LPAR2");
    CHECK(result.at("old_origin_mib") == 128);
    CHECK(result.at("new_origin_mib") == 192);
    CHECK(result.at("bytes_copied") == 256ull << 20);
    CHECK(result.at("pause_us") == 31200);
    CHECK(result.at("total_us") == 58000);
    REQUIRE(result.at("phases").size() == 8);
    CHECK(result.at("phases")[0] == json{{"phase", "check_target"}, {"us", 5}});

    (void)call(api, mvstor_with(R"({"lpar":"LPAR2","origin_mib":0,"timeout_ms":600000})"));
    CHECK(api.mvstor_requests.back().drain_timeout == std::chrono::milliseconds(600000));
}

TEST_CASE("storage.mvstor: live mode and its policy parameters", "[json_rpc]") {
    test::FakeApi api;
    const json response = call(api, mvstor_with(R"({"lpar":"LPAR2","origin_mib":192})"));
    CHECK(response.at("result").at("mode") == "stop-and-copy");
    CHECK(api.mvstor_requests.back().mode == MvstorMode::StopAndCopy);
    (void)call(api, mvstor_with(R"({"lpar":"LPAR2","origin_mib":192,"mode":"live",)"
                                R"("target_pause_us":500,"max_rounds":4,"max_total_ms":2000})"));
    const auto& live = api.mvstor_requests.back();
    CHECK(live.mode == MvstorMode::Live);
    CHECK(live.policy.target_pause == std::chrono::microseconds(500));
    CHECK(live.policy.max_rounds == 4);
    CHECK(live.policy.max_total == std::chrono::milliseconds(2000));
    CHECK(code_of(api, mvstor_with(R"({"lpar":"LPAR2","origin_mib":192,"mode":"fast"})")) ==
          -32602);
    CHECK_THAT(message_of(api, mvstor_with(R"({"lpar":"LPAR2","origin_mib":192,"mode":"fast"})")),
               Catch::Contains("mode: expected"));
    CHECK(code_of(api, mvstor_with(R"({"lpar":"LPAR2","origin_mib":192,"max_rounds":0})")) ==
          -32602);
    CHECK(api.mvstor_requests.size() == 2);
}

TEST_CASE("parse_request classifies where each method runs", "[json_rpc]") {
    auto execution_of = [](std::string_view line) {
        ParseOutcome outcome = parse_request(line);
        REQUIRE(std::holds_alternative<ParsedCall>(outcome));
        return std::get<ParsedCall>(outcome).execution;
    };
    CHECK(execution_of(R"({"jsonrpc":"2.0","id":1,"method":"system.ping"})") == Execution::Inline);
    CHECK(execution_of(R"({"jsonrpc":"2.0","id":1,"method":"lpar.list"})") == Execution::Query);
    CHECK(
        execution_of(R"({"jsonrpc":"2.0","id":1,"method":"lpar.console","params":{"lpar":"A"}})") ==
        Execution::Query);
    CHECK(execution_of(mvstor_with(R"({"lpar":"A","origin_mib":2})")) == Execution::LongRunning);

    ParseOutcome outcome =
        parse_request(mvstor_with(R"({"lpar":"LPAR2","origin_mib":192,"timeout_ms":5})"));
    const auto& parsed = std::get<ParsedCall>(outcome);
    CHECK(parsed.method == "storage.mvstor");
    CHECK(parsed.id == 7);
    CHECK_FALSE(parsed.is_notification);
    const auto& mvstor = std::get<MvstorCall>(parsed.call);
    CHECK(mvstor.request.origin_mib == 192);
    CHECK(mvstor.request.drain_timeout == std::chrono::milliseconds(5));
}

TEST_CASE("invalid params name the parameter and what was expected", "[json_rpc]") {
    test::FakeApi api;
    CHECK(message_of(api, mvstor_with(R"({"lpar":"LPAR2","origin_mib":-1})")) ==
          "origin_mib: expected a non-negative integer");
    CHECK(message_of(api, mvstor_with(R"({"lpar":"LPAR2","origin_mib":1.5})")) ==
          "origin_mib: expected a non-negative integer");
    CHECK(message_of(api, mvstor_with(R"({"lpar":"LPAR2","origin_mib":192.0})")) ==
          "origin_mib: expected a non-negative integer");
    CHECK(message_of(api, mvstor_with(R"({"lpar":"LPAR2","origin_mib":1e3})")) ==
          "origin_mib: expected a non-negative integer");
    CHECK(message_of(api, mvstor_with(R"({"lpar":"LPAR2","origin_mib":"192"})")) ==
          "origin_mib: expected a non-negative integer");
    CHECK(message_of(api, mvstor_with(R"({"lpar":"LPAR2","origin_mib":true})")) ==
          "origin_mib: expected a non-negative integer");
    CHECK(message_of(api, mvstor_with(R"({"lpar":"LPAR2","origin_mib":null})")) ==
          "origin_mib: expected a non-negative integer");
    CHECK(message_of(api, mvstor_with(R"({"lpar":"LPAR2"})")) ==
          "origin_mib: missing (expected a non-negative integer)");
    CHECK(message_of(api, mvstor_with(R"({"origin_mib":192})")) ==
          "lpar: missing (expected a string)");
    CHECK(message_of(api, mvstor_with(R"({"lpar":2,"origin_mib":192})")) ==
          "lpar: expected a string");
    CHECK(message_of(api, mvstor_with(R"({"lpar":"","origin_mib":192})")) ==
          "lpar: expected a non-empty string");
    CHECK(message_of(api, mvstor_with(R"({"lpar":"LPAR2","orgin_mib":192})")) ==
          "orgin_mib: unknown parameter");
    CHECK(message_of(api, mvstor_with(R"("LPAR2")")) ==
          "params: expected an object (parameters by name)");

    SECTION("numbers too large for 64 bits, or for the protocol's range") {
        CHECK(
            message_of(api, mvstor_with(R"({"lpar":"LPAR2","origin_mib":18446744073709551615})")) ==
            "origin_mib: expected an integer from 0 to 17592186044415");
        CHECK(
            message_of(api, mvstor_with(R"({"lpar":"LPAR2","origin_mib":18446744073709551616})")) ==
            "origin_mib: expected an integer from 0 to 17592186044415");
        CHECK(message_of(api,
                         mvstor_with(
                             R"({"lpar":"LPAR2","origin_mib":1000000000000000000000000000000})")) ==
              "origin_mib: expected an integer from 0 to 17592186044415");
        CHECK(
            message_of(api, mvstor_with(R"({"lpar":"LPAR2","origin_mib":-9223372036854775809})")) ==
            "origin_mib: expected a non-negative integer");
    }
    SECTION("timeout_ms is bounded") {
        CHECK(message_of(api, mvstor_with(R"({"lpar":"LPAR2","origin_mib":1,"timeout_ms":0})")) ==
              "timeout_ms: expected an integer from 1 to 600000");
        CHECK(message_of(api,
                         mvstor_with(R"({"lpar":"LPAR2","origin_mib":1,"timeout_ms":600001})")) ==
              "timeout_ms: expected an integer from 1 to 600000");
    }
    SECTION("the error data names the parameter") {
        const json error = error_of(call(api, mvstor_with(R"({"lpar":"LPAR2","origin_mib":-1})")));
        CHECK(error.at("code") == -32602);
        CHECK(error.at("data").at("param") == "origin_mib");
    }
    CHECK(api.mvstor_requests.empty());
}

TEST_CASE("lpar.console: bytes, limits and invalid UTF-8", "[json_rpc]") {
    test::FakeApi api;
    SECTION("default and explicit byte counts") {
        (void)call(api,
                   R"({"jsonrpc":"2.0","id":1,"method":"lpar.console","params":{"lpar":"LPAR1"}})");
        (void)call(
            api,
            R"({"jsonrpc":"2.0","id":2,"method":"lpar.console","params":{"lpar":"LPAR1","bytes":1048576}})");
        REQUIRE(api.console_requests.size() == 2);
        CHECK(api.console_requests[0] == std::pair<std::string, std::size_t>{"LPAR1", 4096});
        CHECK(api.console_requests[1].second == 1048576);
        CHECK(
            message_of(
                api,
                R"({"jsonrpc":"2.0","id":3,"method":"lpar.console","params":{"lpar":"LPAR1","bytes":1048577}})") ==
            "bytes: expected an integer from 0 to 1048576");
    }
    SECTION("an Api that returns too much is cut to the most recent bytes") {
        api.console_text = "0123456789";
        const json response = call(
            api,
            R"({"jsonrpc":"2.0","id":1,"method":"lpar.console","params":{"lpar":"LPAR1","bytes":4}})");
        CHECK(response.at("result").at("text") == "6789");
        CHECK(response.at("result").at("lpar") == "LPAR1");
    }
    SECTION("from an offset: start, next and ipl; lost when the ring no longer has it") {
        api.console_text = "0123456789";
        json result = call(api, R"({"jsonrpc":"2.0","id":1,"method":"lpar.console","params":)"
                                R"({"lpar":"LPAR1","since":3,"bytes":4}})")
                          .at("result");
        CHECK(result.at("text") == "3456");
        CHECK(result.at("start") == 3);
        CHECK(result.at("next") == 7);
        CHECK(result.at("ipl") == 1);
        CHECK_FALSE(result.contains("lost"));
        api.console_ring_bytes = 4;  // keeps "6789"
        result = call(api, R"({"jsonrpc":"2.0","id":2,"method":"lpar.console","params":)"
                           R"({"lpar":"LPAR1","since":3}})")
                     .at("result");
        CHECK(result.at("text") == "6789");
        CHECK(result.at("lost") == 3);
        CHECK(result.at("next") == 10);
        // Beyond the end (an earlier IPL's offset): nothing, and next stays at the end.
        result = call(api, R"({"jsonrpc":"2.0","id":3,"method":"lpar.console","params":)"
                           R"({"lpar":"LPAR1","since":99}})")
                     .at("result");
        CHECK(result.at("text") == "");
        CHECK(result.at("next") == 10);
    }
    SECTION("a character cut by the read's end is left for the next read") {
        api.console_text = "ab\xe2\x82";  // the first two bytes of U+20AC
        json result =
            call(api,
                 R"({"jsonrpc":"2.0","id":1,"method":"lpar.console","params":{"lpar":"LPAR1"}})")
                .at("result");
        CHECK(result.at("text") == "ab");
        CHECK(result.at("next") == 2);
        api.console_text += "\xac!";
        result = call(api, R"({"jsonrpc":"2.0","id":2,"method":"lpar.console","params":)"
                           R"({"lpar":"LPAR1","since":2}})")
                     .at("result");
        CHECK(result.at("text") == "\xe2\x82\xac!");
        CHECK(result.at("next") == 6);
    }
    SECTION("lpar.console_write: data up to 4096 bytes; what the UART took") {
        const json written = call(api, R"({"jsonrpc":"2.0","id":1,"method":"lpar.console_write",)"
                                       R"("params":{"lpar":"LPAR2","data":"ls\u0003\r"}})");
        CHECK(written.at("result") == json{{"lpar", "LPAR2"}, {"written", 4}});
        CHECK(api.typed() == "ls\x03\r");
        const json big{{"jsonrpc", "2.0"},
                       {"id", 2},
                       {"method", "lpar.console_write"},
                       {"params", {{"lpar", "LPAR2"}, {"data", std::string(4097, 'x')}}}};
        CHECK(message_of(api, big.dump()) == "data: longer than 4096 bytes");
        CHECK(message_of(api,
                         R"({"jsonrpc":"2.0","id":3,"method":"lpar.console_write",)"
                         R"("params":{"lpar":"LPAR2"}})") == "data: missing (expected a string)");
        CHECK(message_of(api,
                         R"({"jsonrpc":"2.0","id":4,"method":"lpar.console_write",)"
                         R"("params":{"lpar":"LPAR2","data":7}})") == "data: expected a string");
        // Attaching needs a connection: without the server there is none.
        CHECK(error_of(call(api, R"({"jsonrpc":"2.0","id":5,"method":"lpar.console_attach",)"
                                 R"("params":{"lpar":"LPAR2"}})"))
                  .at("code") == -32003);
    }
    SECTION("invalid UTF-8 becomes U+FFFD; control bytes survive escaped") {
        api.console_text = std::string("ok \xff\xfe end\n\x01\x00 \xc3\xa9", 16);
        const std::string line = handle_line(
            api, R"({"jsonrpc":"2.0","id":1,"method":"lpar.console","params":{"lpar":"LPAR1"}})");
        CHECK(line.find('\n') == std::string::npos);
        const json response = json::parse(line);
        CHECK(response.at("result").at("text") ==
              std::string("ok \xEF\xBF\xBD\xEF\xBF\xBD end\n\x01\x00 \xc3\xa9", 20));
    }
}

TEST_CASE("sanitize_utf8 follows the Unicode replacement practice", "[json_rpc][utf8]") {
    CHECK(sanitize_utf8("plain ascii") == "plain ascii");
    CHECK(sanitize_utf8("\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80") ==
          "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80");
    const std::string fffd = "\xEF\xBF\xBD";
    CHECK(sanitize_utf8("\x80") == fffd);                        // lone continuation byte
    CHECK(sanitize_utf8("\xc0\xaf") == fffd + fffd);             // overlong '/'
    CHECK(sanitize_utf8("\xe0\x80\xaf") == fffd + fffd + fffd);  // overlong, 3 bytes
    CHECK(sanitize_utf8("\xed\xa0\x80") == fffd + fffd + fffd);  // UTF-16 surrogate
    CHECK(sanitize_utf8("\xf4\x90\x80\x80") == fffd + fffd + fffd + fffd);  // > U+10FFFF
    CHECK(sanitize_utf8("\xe2\x82") == fffd);                               // truncated at the end
    CHECK(sanitize_utf8("\xe2\x82x") == fffd + "x");  // truncated in the middle
    CHECK(sanitize_utf8("\xf0\x9f\x98") == fffd);
    CHECK(sanitize_utf8("\xff") == fffd);
    CHECK(sanitize_utf8(std::string_view("a\0b", 3)) == std::string("a\0b", 3));
    // Whatever the input, the output dumps without throwing.
    std::string every_byte;
    for (int byte = 0; byte < 256; ++byte) every_byte.push_back(static_cast<char>(byte));
    CHECK_NOTHROW(json(sanitize_utf8(every_byte)).dump());
}

TEST_CASE("system.ping answers with the version", "[json_rpc]") {
    test::FakeApi api;
    const json response = call(api, R"({"jsonrpc":"2.0","id":"p","method":"system.ping"})");
    CHECK(response.at("id") == "p");
    CHECK(response.at("result").at("version") == std::string(daemon_version()));
    CHECK(!daemon_version().empty());
}

TEST_CASE("ids are echoed verbatim", "[json_rpc]") {
    test::FakeApi api;
    CHECK(call(api, R"({"jsonrpc":"2.0","id":42,"method":"system.ping"})").at("id") == 42);
    CHECK(call(api, R"({"jsonrpc":"2.0","id":-3,"method":"system.ping"})").at("id") == -3);
    CHECK(call(api, R"({"jsonrpc":"2.0","id":"abc-1","method":"system.ping"})").at("id") ==
          "abc-1");
    CHECK(call(api, R"({"jsonrpc":"2.0","id":null,"method":"system.ping"})").at("id").is_null());
    CHECK(call(api, R"({"jsonrpc":"2.0","id":18446744073709551615,"method":"system.ping"})")
              .at("id") == 18446744073709551615ull);
    // On errors too.
    CHECK(call(api, R"({"jsonrpc":"2.0","id":"e","method":"nope"})").at("id") == "e");
    CHECK(call(api, mvstor_with(R"({"lpar":1})")).at("id") == 7);
}

TEST_CASE("malformed requests get the standard codes", "[json_rpc]") {
    test::FakeApi api;
    SECTION("-32700 parse error") {
        const json response = call(api, R"({"jsonrpc":"2.0","id":1,"method":)");
        CHECK(response.at("id").is_null());
        CHECK(error_of(response).at("code") == -32700);
        CHECK(error_of(response).at("data").contains("detail"));
        CHECK(code_of(api, "") == -32700);
        CHECK(code_of(api, "not json") == -32700);
        CHECK(code_of(api, "{} trailing") == -32700);
        CHECK(code_of(api, "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"\xff\"}") == -32700);
        // Found by the fuzzer: nlohmann reports a number overflow as out_of_range, not parse_error.
        CHECK(code_of(api, R"({"jsonrpc":"2.0","id":1e3082,"method":"system.ping"})") == -32700);
        CHECK(code_of(api, mvstor_with(R"({"lpar":"LPAR2","origin_mib":-1e400})")) == -32700);
    }
    SECTION("-32600 invalid request") {
        CHECK(message_of(api, "[]") == "batch requests are not supported");
        CHECK(message_of(api, R"([{"jsonrpc":"2.0","id":1,"method":"system.ping"}])") ==
              "batch requests are not supported");
        CHECK(message_of(api, "42") == "request must be a JSON object");
        CHECK(message_of(api, "\"text\"") == "request must be a JSON object");
        CHECK(message_of(api, "null") == "request must be a JSON object");
        CHECK(message_of(api, R"({"id":1,"method":"system.ping"})") == "jsonrpc: expected \"2.0\"");
        CHECK(message_of(api, R"({"jsonrpc":"1.0","id":1,"method":"system.ping"})") ==
              "jsonrpc: expected \"2.0\"");
        CHECK(message_of(api, R"({"jsonrpc":2.0,"id":1,"method":"system.ping"})") ==
              "jsonrpc: expected \"2.0\"");
        CHECK(message_of(api, R"({"jsonrpc":"2.0","id":1})") == "method: expected a string");
        CHECK(message_of(api, R"({"jsonrpc":"2.0","id":1,"method":5})") ==
              "method: expected a string");
        CHECK(message_of(api, R"({"jsonrpc":"2.0","id":1,"method":"system.ping","extra":1})") ==
              "extra: unknown member");
        for (const char* bad_id : {"{}", "[]", "true"}) {
            const json response =
                call(api, std::string(R"({"jsonrpc":"2.0","method":"system.ping","id":)") + bad_id +
                              "}");
            CHECK(response.at("id").is_null());
            CHECK(error_of(response).at("code") == -32600);
            CHECK(error_of(response).at("message") == "id: expected a string, a number or null");
        }
        // An invalid request without an id still gets an answer (id null), as JSON-RPC says.
        CHECK(code_of(api, R"({"jsonrpc":"2.0","method":1})") == -32600);
    }
    SECTION("-32601 method not found names the method") {
        const json error =
            error_of(call(api, R"({"jsonrpc":"2.0","id":1,"method":"storage.defrag"})"));
        CHECK(error.at("code") == -32601);
        CHECK(error.at("message") == "method not found: storage.defrag");
        CHECK(error.at("data").at("method") == "storage.defrag");
    }
    SECTION("an oversize line") {
        const std::string line = std::string(kMaxRequestBytes + 1, ' ');
        CHECK(message_of(api, line) == "request larger than 65536 bytes");
    }
}

TEST_CASE("deep nesting is refused before it reaches the parser", "[json_rpc]") {
    test::FakeApi api;
    CHECK(code_of(api, std::string(65000, '[')) == -32700);
    CHECK(code_of(api, std::string(60000, '{')) == -32700);
    CHECK(code_of(api, std::string(100000, '[')) == -32600);  // over the line limit even sooner
    CHECK(message_of(api, std::string(33, '[') + std::string(33, ']')) ==
          "request nests deeper than 32 levels");
    // Brackets inside strings do not count, escaped quotes do not end a string.
    const std::string name = std::string(100, '[') + "\\\"" + std::string(100, '{');
    CHECK(!nests_deeper_than(R"({"a":")" + name + R"("})", 2));
    CHECK(nests_deeper_than("[[[", 2));
    CHECK(!nests_deeper_than("[[]]", 2));
    const json response =
        call(api, R"({"jsonrpc":"2.0","id":1,"method":"lpar.console","params":{"lpar":")" + name +
                      R"("}})");
    CHECK(error_of(response).at("code") == -32001);  // it parsed, and reached the Api
    // Nesting at the limit parses (and is then refused for its content).
    std::string params = "{\"lpar\":" + std::string(29, '[') + std::string(29, ']') + "}";
    CHECK(message_of(api, R"({"jsonrpc":"2.0","id":1,"method":"lpar.console","params":)" + params +
                              "}") == "lpar: expected a string");
}

TEST_CASE("notifications get no response, whatever happens", "[json_rpc]") {
    test::FakeApi api;
    CHECK(handle_line(api, R"({"jsonrpc":"2.0","method":"lpar.list"})").empty());
    CHECK(api.list_calls == 1);  // but they do run
    CHECK(handle_line(api, R"({"jsonrpc":"2.0","method":"nope"})").empty());
    CHECK(handle_line(api, R"({"jsonrpc":"2.0","method":"storage.mvstor","params":{"lpar":-1}})")
              .empty());
    api.throw_next(ErrorKind::NotFound, "LPAR9: no such LPAR");
    CHECK(handle_line(api, R"({"jsonrpc":"2.0","method":"lpar.list"})").empty());
    ParseOutcome outcome = parse_request(R"({"jsonrpc":"2.0","method":"system.ping"})");
    CHECK(std::get<ParsedCall>(outcome).is_notification);
}

TEST_CASE("Error kinds map to application codes with the Error's message", "[json_rpc]") {
    struct Case {
        ErrorKind kind;
        int code;
        const char* name;
    };
    for (const Case& expected :
         {Case{ErrorKind::NotFound, -32001, "NotFound"},
          Case{ErrorKind::InvalidArgument, -32002, "InvalidArgument"},
          Case{ErrorKind::Refused, -32003, "Refused"}, Case{ErrorKind::Busy, -32004, "Busy"},
          Case{ErrorKind::System, -32005, "System"}}) {
        test::FakeApi api;
        api.throw_next(expected.kind, "LPAR2: target 400-656 MiB overlaps LPAR3");
        const json response = call(api, mvstor_with(R"({"lpar":"LPAR2","origin_mib":400})"));
        CHECK(response.at("id") == 7);
        const json error = error_of(response);
        CHECK(error.at("code") == expected.code);
        CHECK(error.at("message") == "LPAR2: target 400-656 MiB overlaps LPAR3");
        CHECK(error.at("data").at("kind") == expected.name);
        CHECK(rpc_code_name(static_cast<RpcErrorCode>(expected.code)) == expected.name);
    }
}

TEST_CASE("other exceptions from the Api become internal errors", "[json_rpc]") {
    struct ThrowingApi : test::FakeApi {
        SystemStatus list() override { throw std::logic_error("bug"); }
        ConsoleText console(const std::string&, std::optional<std::uint64_t>,
                            std::size_t) override {
            throw 42;
        }
    } api;
    const json error = error_of(call(api, R"({"jsonrpc":"2.0","id":1,"method":"lpar.list"})"));
    CHECK(error.at("code") == -32603);
    CHECK(error.at("message") == "internal error: bug");
    CHECK(
        code_of(api, R"({"jsonrpc":"2.0","id":1,"method":"lpar.console","params":{"lpar":"A"}})") ==
        -32603);
}

TEST_CASE("invalid UTF-8 in an Api error message does not break the response", "[json_rpc]") {
    test::FakeApi api;
    api.throw_next(ErrorKind::NotFound, "LPAR\xff: no such LPAR");
    const json error = error_of(call(api, R"({"jsonrpc":"2.0","id":1,"method":"lpar.list"})"));
    CHECK(error.at("message") == "LPAR\xEF\xBF\xBD: no such LPAR");
}

TEST_CASE("error_response has id null and the given data", "[json_rpc]") {
    const json response =
        json::parse(error_response(RpcErrorCode::Busy, "too many clients", {{"limit", 64}}));
    CHECK(response.at("id").is_null());
    CHECK(response.at("error").at("code") == -32004);
    CHECK(response.at("error").at("data").at("limit") == 64);
}

namespace {

std::string request_for(std::string_view method, std::string_view params) {
    return std::string(R"({"jsonrpc":"2.0","id":9,"method":")") + std::string(method) +
           R"(","params":)" + std::string(params) + "}";
}

}  // namespace

TEST_CASE("lpar.define validates every parameter and returns the row", "[json_rpc]") {
    test::FakeApi api;
    const json row =
        call(api, request_for("lpar.define", R"({"name":"LPAR3","size_mib":64,"vcpus":2,)"
                                             R"("firmware":"/fw.elf","rewrite_pages_per_sec":10,)"
                                             R"("working_set_mib":8,"round_limit":3})"))
            .at("result");
    CHECK(row == json{{"name", "LPAR3"},
                      {"origin_mib", 0},
                      {"size_mib", 64},
                      {"gap_mib", 0},
                      {"state", "defined"},
                      {"has_storage", false},
                      {"reason", ""},
                      {"vcpus", 2},
                      {"guest", "firmware"},
                      {"max_size_mib", 64},
                      {"plugged_mib", 0}});
    REQUIRE(api.defined.size() == 1);
    const LparDefinition& definition = api.defined[0];
    CHECK(!definition.origin_mib.has_value());
    CHECK(definition.firmware == "/fw.elf");
    CHECK(definition.rewrite_pages_per_sec == 10);
    CHECK(definition.working_set_mib == 8);
    CHECK(definition.round_limit == 3);
    CHECK(definition.max_size_mib == 0);  // absent: no virtio-mem region

    call(api, request_for("lpar.define", R"({"name":"LPAR4","size_mib":64,"origin_mib":400})"));
    REQUIRE(api.defined.size() == 2);
    CHECK(api.defined[1].origin_mib == std::optional<std::uint64_t>(400));
    CHECK(api.defined[1].vcpus == 1);

    CHECK(message_of(api, request_for("lpar.define", R"({"size_mib":64})")) ==
          "name: missing (expected a string)");
    CHECK(message_of(api, request_for("lpar.define", R"({"name":"X"})")) ==
          "size_mib: missing (expected a non-negative integer)");
    CHECK(code_of(api, request_for("lpar.define", R"({"name":"X","size_mib":0})")) == -32602);
    CHECK(code_of(api, request_for("lpar.define", R"({"name":"X","size_mib":4,"vcpus":0})")) ==
          -32602);
    CHECK(code_of(api, request_for("lpar.define", R"({"name":"X","size_mib":4,"vcpus":256})")) ==
          -32602);
    CHECK(
        message_of(api, request_for("lpar.define", R"({"name":"X","size_mib":4,"firmware":1})")) ==
        "firmware: expected a string");
    CHECK(
        message_of(api, request_for("lpar.define", R"({"name":"X","size_mib":4,"orgin_mib":1})")) ==
        "orgin_mib: unknown parameter");
    CHECK(code_of(api, request_for("lpar.define",
                                   R"({"name":"X","size_mib":4,"origin_mib":-2})")) == -32602);
    CHECK(api.defined.size() == 2);  // none of the refused ones reached the Api
    // The Api's refusal comes back with its kind.
    const json duplicate =
        error_of(call(api, request_for("lpar.define", R"({"name":"LPAR3","size_mib":64})")));
    CHECK(duplicate.at("code") == -32003);
    CHECK(duplicate.at("message") == "LPAR3: already defined");
}

TEST_CASE("the lifecycle methods return the row and map refusals", "[json_rpc]") {
    test::FakeApi api;
    call(api, request_for("lpar.define", R"({"name":"LPAR3","size_mib":100})"));
    const auto state_after = [&](std::string_view method) {
        return call(api, request_for(method, R"({"lpar":"LPAR3"})")).at("result");
    };
    const json active = state_after("lpar.activate");
    CHECK(active.at("state") == "running");
    CHECK(active.at("has_storage") == true);
    CHECK(active.at("origin_mib") == 384);  // first fit after LPAR2
    CHECK(active.at("gap_mib") == 25);
    const json stopped = state_after("lpar.stop");
    CHECK(stopped.at("state") == "stopped");
    CHECK(stopped.at("reason") == "operator stop");
    CHECK(state_after("lpar.start").at("state") == "running");
    CHECK(state_after("lpar.reset").at("state") == "running");
    CHECK(error_of(call(api, request_for("lpar.remove", R"({"lpar":"LPAR3"})"))).at("code") ==
          -32003);  // still active
    CHECK(state_after("lpar.deactivate").at("state") == "defined");
    CHECK(call(api, request_for("lpar.remove", R"({"lpar":"LPAR3"})")).at("result") ==
          json{{"removed", "LPAR3"}});
    CHECK(api.status.lpars.size() == 2);

    for (std::string_view method : {"lpar.activate", "lpar.stop", "lpar.start", "lpar.reset",
                                    "lpar.deactivate", "lpar.remove", "storage.cancel"}) {
        INFO(method);
        const json missing = error_of(call(api, request_for(method, R"({"lpar":"LPAR9"})")));
        CHECK(missing.at("code") == -32001);
        CHECK(missing.at("data").at("kind") == "NotFound");
        CHECK(message_of(api, request_for(method, "{}")) == "lpar: missing (expected a string)");
        CHECK(message_of(api, request_for(method, R"({"lpar":""})")) ==
              "lpar: expected a non-empty string");
        CHECK(message_of(api, request_for(method, R"({"lpar":"A","x":1})")) ==
              "x: unknown parameter");
    }
    CHECK(call(api, request_for("lpar.stop", R"({"lpar":"LPAR1"})")).at("result").at("state") ==
          "stopped");
    CHECK(error_of(call(api, request_for("lpar.stop", R"({"lpar":"LPAR1"})"))).at("code") ==
          -32003);
}

TEST_CASE("system.config returns the configuration object", "[json_rpc]") {
    test::FakeApi api;
    const json config = call(api, R"({"jsonrpc":"2.0","id":1,"method":"system.config"})");
    CHECK(config.at("result").at("main_storage_mib") == 509);
    CHECK(config.at("result").at("lpars").size() == 2);
    CHECK(code_of(api, request_for("system.config", R"({"x":1})")) == -32602);
    api.config_json = "not json";
    const json broken = error_of(call(api, R"({"jsonrpc":"2.0","id":1,"method":"system.config"})"));
    CHECK(broken.at("code") == -32603);
}

TEST_CASE("storage.cancel and the event methods", "[json_rpc]") {
    test::FakeApi api;
    CHECK(message_of(api, request_for("storage.cancel", R"({"lpar":"LPAR2"})")) ==
          "LPAR2: no MVSTOR is running");
    const json subscribed = call(api, R"({"jsonrpc":"2.0","id":1,"method":"events.subscribe"})");
    CHECK(subscribed.at("result") ==
          json{{"subscribed", true},
               {"filter", {{"events", json::array()}, {"lpars", json::array()}}}});
    const json unsubscribed =
        call(api, R"({"jsonrpc":"2.0","id":1,"method":"events.unsubscribe"})");
    CHECK(unsubscribed.at("result") == json{{"subscribed", false}});
    CHECK(code_of(api, request_for("events.subscribe", R"({"x":1})")) == -32602);

    const auto subscribe = parse_request(R"({"jsonrpc":"2.0","id":1,"method":"events.subscribe"})");
    REQUIRE(std::holds_alternative<ParsedCall>(subscribe));
    CHECK(std::get<ParsedCall>(subscribe).execution == Execution::Session);
    const auto cancel = parse_request(
        R"({"jsonrpc":"2.0","id":1,"method":"storage.cancel","params":{"lpar":"A"}})");
    REQUIRE(std::holds_alternative<ParsedCall>(cancel));
    CHECK(std::get<ParsedCall>(cancel).execution == Execution::Query);
}

TEST_CASE("event notifications merge the data and keep event, lpar and the timestamps",
          "[json_rpc]") {
    // 2025-12-07 10:01:02.123456 UTC, 42 us after the monotonic clock's start.
    const json phase = json::parse(event_notification(
        {"mvstor.phase", "LPAR2", R"({"phase":"copy","us":5,"lpar":"X","time":"no"})",
         1'765'101'662'123'456, 42}));
    CHECK(phase == json{{"jsonrpc", "2.0"},
                        {"method", "event"},
                        {"params",
                         {{"event", "mvstor.phase"},
                          {"lpar", "LPAR2"},
                          {"time", "2025-12-07T10:01:02.123456Z"},
                          {"monotonic_us", 42},
                          {"phase", "copy"},
                          {"us", 5}}}});
    // An Event is stamped when it is made: the clocks of this moment, not zero.
    const auto before_us = now_wall_us();
    const Event fresh{"lpar.state", "L", "{}"};
    CHECK(fresh.wall_us >= before_us);
    CHECK(fresh.wall_us <= now_wall_us());
    CHECK(fresh.monotonic_us > 0);
    const Event later{"lpar.state", "L", "{}"};
    CHECK(later.monotonic_us >= fresh.monotonic_us);
    const json not_object = json::parse(event_notification({"x", "L", "[1]"}));
    CHECK(not_object.at("params").at("data") == json::array({1}));
    const json broken = json::parse(event_notification({"x", "L", "{\xff"}));
    CHECK(broken.at("params").at("data").is_string());
    json dropped = json::parse(events_dropped_notification(7)).at("params");
    CHECK(dropped.at("time").get<std::string>().size() == 27);  // "2026-...Z", stamped now
    CHECK(dropped.at("monotonic_us").get<std::int64_t>() > 0);
    dropped.erase("time");
    dropped.erase("monotonic_us");
    CHECK(dropped == json{{"event", "events.dropped"}, {"count", 7}});
}

TEST_CASE("storage.exchange, storage.plan_grow and storage.make_room", "[json_rpc]") {
    test::FakeApi api;
    auto exchanged = call(
        api,
        R"({"jsonrpc":"2.0","id":1,"method":"storage.exchange","params":{"a":"LPAR1","b":"LPAR2","timeout_ms":500}})");
    CHECK(exchanged.at("result").at("a_new_origin_mib") == 128);
    REQUIRE(api.exchange_requests.size() == 1);
    CHECK(api.exchange_requests[0].drain_timeout == std::chrono::milliseconds(500));
    CHECK(
        code_of(api,
                R"({"jsonrpc":"2.0","id":2,"method":"storage.exchange","params":{"a":"LPAR1"}})") ==
        -32602);

    auto plan = call(
        api,
        R"({"jsonrpc":"2.0","id":3,"method":"storage.plan_grow","params":{"lpar":"LPAR1","mib":64}})");
    CHECK(plan.at("result").at("possible") == true);
    CHECK(plan.at("result").at("steps")[0].at("to_mib") == 192);
    CHECK(plan.at("result").at("carried_out") == false);
    CHECK(
        code_of(
            api,
            R"({"jsonrpc":"2.0","id":4,"method":"storage.plan_grow","params":{"lpar":"LPAR1","mib":64,"mode":"live"}})") ==
        -32602);

    auto room = call(
        api,
        R"({"jsonrpc":"2.0","id":5,"method":"storage.make_room","params":{"lpar":"LPAR1","mib":64,"mode":"live"}})");
    CHECK(room.at("result").at("carried_out") == true);
    CHECK(room.at("result").at("moves").size() == 1);
    CHECK(
        code_of(
            api,
            R"({"jsonrpc":"2.0","id":6,"method":"storage.make_room","params":{"lpar":"LPAR1","mib":0}})") ==
        -32602);
}

TEST_CASE("lpar.define takes max_size_mib; the hypervisor checks it against size_mib",
          "[json_rpc]") {
    test::FakeApi api;
    const json row = call(api, request_for("lpar.define",
                                           R"({"name":"LPAR3","size_mib":64,"max_size_mib":256})"))
                         .at("result");
    CHECK(row.at("max_size_mib") == 256);
    REQUIRE(api.defined.size() == 1);
    CHECK(api.defined[0].max_size_mib == 256);

    call(api, request_for("lpar.define", R"({"name":"LPAR4","size_mib":64,"max_size_mib":0})"));
    REQUIRE(api.defined.size() == 2);
    CHECK(api.defined[1].max_size_mib == 0);
    // Below size_mib or odd: the one definition validator refuses it before any Api call.
    CHECK(message_of(api, request_for("lpar.define",
                                      R"({"name":"LPAR5","size_mib":64,"max_size_mib":32})")) ==
          "max_size_mib: 32 MiB is below size_mib (64 MiB): 0 (cannot grow) or size_mib and up");
    CHECK(message_of(api, request_for("lpar.define",
                                      R"({"name":"LPAR5","size_mib":64,"max_size_mib":65})")) ==
          "max_size_mib: expected a multiple of 2 (2 MiB units)");
    CHECK(api.defined.size() == 2);

    for (const char* bad : {R"(-2)", R"(1.5)", R"("256")", R"(true)", R"(17592186044416)"}) {
        INFO(bad);
        const json error = error_of(call(
            api,
            request_for("lpar.define",
                        std::string(R"({"name":"X","size_mib":4,"max_size_mib":)") + bad + "}")));
        CHECK(error.at("code") == -32602);
        CHECK(error.at("data").at("param") == "max_size_mib");
    }
    CHECK(api.defined.size() == 2);
}

TEST_CASE("storage.expand / shrink / grow: params", "[json_rpc][resize]") {
    test::FakeApi api;
    for (std::string_view method : {"storage.expand", "storage.shrink", "storage.grow"}) {
        INFO(method);
        const auto error_for = [&](std::string_view params) {
            return error_of(call(api, request_for(method, params)));
        };
        CHECK(error_for(R"({"mib":64})").at("message") == "lpar: missing (expected a string)");
        CHECK(error_for(R"({"lpar":"","mib":64})").at("message") ==
              "lpar: expected a non-empty string");
        const json missing = error_for(R"({"lpar":"LPAR1"})");
        CHECK(missing.at("code") == -32602);
        CHECK(missing.at("message") == "mib: missing (expected a non-negative integer)");
        CHECK(missing.at("data").at("param") == "mib");
        CHECK(error_for(R"({"lpar":"LPAR1","mib":0})").at("message") ==
              "mib: expected an integer from 2 to 17592186044415");
        const json odd = error_for(R"({"lpar":"LPAR1","mib":63})");
        CHECK(odd.at("code") == -32602);
        CHECK(odd.at("message") == "mib: expected a multiple of 2 (2 MiB blocks)");
        CHECK(odd.at("data").at("param") == "mib");
        CHECK(error_for(R"({"lpar":"LPAR1","mib":1})").at("data").at("param") == "mib");
        CHECK(error_for(R"({"lpar":"LPAR1","mib":-2})").at("message") ==
              "mib: expected a non-negative integer");
        CHECK(error_for(R"({"lpar":"LPAR1","mib":64.0})").at("message") ==
              "mib: expected a non-negative integer");
        CHECK(error_for(R"({"lpar":"LPAR1","mib":17592186044416})").at("message") ==
              "mib: expected an integer from 2 to 17592186044415");
        CHECK(error_for(R"({"lpar":"LPAR1","mib":64,"timeout_ms":0})").at("message") ==
              "timeout_ms: expected an integer from 1 to 600000");
        CHECK(
            error_for(R"({"lpar":"LPAR1","mib":64,"timeout_ms":600001})").at("data").at("param") ==
            "timeout_ms");
        CHECK(error_for(R"({"lpar":"LPAR1","mib":64,"size":1})").at("message") ==
              "size: unknown parameter");

        // Accepted params become a ResizeCall on the long pool.
        ParseOutcome outcome =
            parse_request(request_for(method, R"({"lpar":"LPAR1","mib":64,"timeout_ms":250})"));
        REQUIRE(std::holds_alternative<ParsedCall>(outcome));
        const auto& parsed = std::get<ParsedCall>(outcome);
        CHECK(parsed.execution == Execution::LongRunning);
        const auto& resize = std::get<ResizeCall>(parsed.call);
        CHECK(resize.request.lpar == "LPAR1");
        CHECK(resize.request.mib == 64);
        CHECK(resize.request.timeout == std::chrono::milliseconds(250));
        CHECK(resize.mode == MvstorMode::StopAndCopy);
        ParseOutcome defaults = parse_request(request_for(method, R"({"lpar":"LPAR1","mib":2})"));
        CHECK(std::get<ResizeCall>(std::get<ParsedCall>(defaults).call).request.timeout ==
              std::chrono::milliseconds(10000));
    }
    // mode belongs to storage.grow only (its room-making MVSTORs).
    CHECK(message_of(api,
                     request_for("storage.expand", R"({"lpar":"LPAR1","mib":64,"mode":"live"})")) ==
          "mode: unknown parameter");
    CHECK(message_of(api,
                     request_for("storage.shrink", R"({"lpar":"LPAR1","mib":64,"mode":"live"})")) ==
          "mode: unknown parameter");
    const json bad_mode = error_of(
        call(api, request_for("storage.grow", R"({"lpar":"LPAR1","mib":64,"mode":"fast"})")));
    CHECK(bad_mode.at("code") == -32602);
    CHECK(bad_mode.at("message") == R"(mode: expected "stop-and-copy" or "live", got "fast")");
    CHECK(bad_mode.at("data").at("param") == "mode");
    CHECK(code_of(api, request_for("storage.grow", R"({"lpar":"LPAR1","mib":64,"mode":1})")) ==
          -32602);
    for (const auto& [text, mode] : {std::pair{"live", MvstorMode::Live},
                                     std::pair{"stop-and-copy", MvstorMode::StopAndCopy}}) {
        ParseOutcome outcome = parse_request(request_for(
            "storage.grow", std::string(R"({"lpar":"LPAR1","mib":64,"mode":")") + text + "\"}"));
        CHECK(std::get<ResizeCall>(std::get<ParsedCall>(outcome).call).mode == mode);
    }
    // None of the refused requests reached the Api.
    CHECK(api.expand_requests.empty());
    CHECK(api.shrink_requests.empty());
    CHECK(api.grow_requests.empty());
}

TEST_CASE("storage.expand and storage.shrink return the ResizeResult", "[json_rpc][resize]") {
    test::FakeApi api;
    api.status.lpars[1].max_size_mib = 512;  // LPAR2 128..384, 125 MiB free above
    const json expanded =
        call(api, request_for("storage.expand", R"({"lpar":"LPAR2","mib":64,"timeout_ms":500})"));
    CHECK(expanded.at("id") == 9);
    CHECK(expanded.at("result") == json{{"lpar", "LPAR2"},
                                        {"old_size_mib", 256},
                                        {"new_size_mib", 320},
                                        {"plugged_mib", 64},
                                        {"total_us", 4200}});
    REQUIRE(api.expand_requests.size() == 1);
    CHECK(api.expand_requests[0].lpar == "LPAR2");
    CHECK(api.expand_requests[0].mib == 64);
    CHECK(api.expand_requests[0].timeout == std::chrono::milliseconds(500));
    // lpar.list shows the new size, what is plugged, and the smaller gap.
    const json row =
        call(api, R"({"jsonrpc":"2.0","id":1,"method":"lpar.list"})").at("result").at("lpars")[1];
    CHECK(row.at("size_mib") == 320);
    CHECK(row.at("plugged_mib") == 64);
    CHECK(row.at("max_size_mib") == 512);
    CHECK(row.at("gap_mib") == 61);

    const json shrunk = call(api, request_for("storage.shrink", R"({"lpar":"LPAR2","mib":32})"));
    CHECK(shrunk.at("result") == json{{"lpar", "LPAR2"},
                                      {"old_size_mib", 320},
                                      {"new_size_mib", 288},
                                      {"plugged_mib", 32},
                                      {"total_us", 4200}});
    REQUIRE(api.shrink_requests.size() == 1);
    CHECK(api.shrink_requests[0].timeout == std::chrono::milliseconds(10000));
}

TEST_CASE("storage.grow returns the plan and the expansion", "[json_rpc][resize]") {
    test::FakeApi api;
    api.status.lpars[0].max_size_mib = 256;  // LPAR1 0..128, LPAR2 right above it
    const json grown = call(
        api,
        request_for("storage.grow", R"({"lpar":"LPAR1","mib":64,"mode":"live","timeout_ms":700})"));
    const json& result = grown.at("result");
    CHECK(result.size() == 2);
    const json& plan = result.at("plan");
    CHECK(plan.at("lpar") == "LPAR1");
    CHECK(plan.at("mib") == 64);
    CHECK(plan.at("possible") == true);
    CHECK(plan.at("carried_out") == true);
    CHECK(
        plan.at("steps") ==
        json::array({{{"lpar", "LPAR2"}, {"from_mib", 128}, {"to_mib", 192}, {"size_mib", 256}}}));
    CHECK(plan.at("bytes_copied") == (256ull << 20));
    REQUIRE(plan.at("moves").size() == 1);
    CHECK(plan.at("moves")[0].at("lpar") == "LPAR2");
    CHECK(plan.at("moves")[0].at("new_origin_mib") == 192);
    CHECK(plan.at("moves")[0].at("mode") == "live");
    CHECK(result.at("expansion") == json{{"lpar", "LPAR1"},
                                         {"old_size_mib", 128},
                                         {"new_size_mib", 192},
                                         {"plugged_mib", 64},
                                         {"total_us", 4200}});
    REQUIRE(api.grow_requests.size() == 1);
    CHECK(api.grow_requests[0].first.lpar == "LPAR1");
    CHECK(api.grow_requests[0].first.mib == 64);
    CHECK(api.grow_requests[0].first.timeout == std::chrono::milliseconds(700));
    CHECK(api.grow_requests[0].second == MvstorMode::Live);
    // The plan's serialization is storage.make_room's.
    GrowPlanResult alone;
    alone.lpar = "LPAR1";
    CHECK(to_json(GrowResult{alone, {}}).at("plan") == to_json(alone));

    // Room already free above: no steps, no moves.
    api.status.lpars[1].max_size_mib = 512;
    const json direct = call(api, request_for("storage.grow", R"({"lpar":"LPAR2","mib":2})"));
    CHECK(direct.at("result").at("plan").at("steps").empty());
    CHECK(direct.at("result").at("plan").at("moves").empty());
    CHECK(api.grow_requests.back().second == MvstorMode::StopAndCopy);
}

TEST_CASE("storage.expand / shrink / grow map the Api's refusals", "[json_rpc][resize]") {
    struct Case {
        ErrorKind kind;
        int code;
        const char* name;
    };
    for (std::string_view method : {"storage.expand", "storage.shrink", "storage.grow"}) {
        for (const Case& expected :
             {Case{ErrorKind::NotFound, -32001, "NotFound"},
              Case{ErrorKind::InvalidArgument, -32002, "InvalidArgument"},
              Case{ErrorKind::Refused, -32003, "Refused"}, Case{ErrorKind::Busy, -32004, "Busy"},
              Case{ErrorKind::System, -32005, "System"}}) {
            INFO(method << " " << expected.name);
            test::FakeApi api;
            api.throw_next(expected.kind, "LPAR1: the guest did not plug within 10 s");
            const json error =
                error_of(call(api, request_for(method, R"({"lpar":"LPAR1","mib":64})")));
            CHECK(error.at("code") == expected.code);
            CHECK(error.at("message") == "LPAR1: the guest did not plug within 10 s");
            CHECK(error.at("data").at("kind") == expected.name);
        }
    }
    // The hypervisor's own refusals (lpar/resize_rules.hpp, StorageMap::check_resize), which the
    // fake applies to its table.
    test::FakeApi api;
    const auto refused = [&](const char* method, const char* params) {
        const json error = error_of(call(api, request_for(method, params)));
        CHECK(error.at("code") == -32003);
        return error.at("message").get<std::string>();
    };
    // LPAR1 (0..128, max_size_mib 128) has no virtio-mem region.
    CHECK(refused("storage.expand", R"({"lpar":"LPAR1","mib":64})") ==
          "LPAR1 cannot grow or shrink: it has no virtio-mem region (define it with max_size_mib "
          "above size_mib)");
    api.status.lpars[0].max_size_mib = 160;
    CHECK(refused("storage.expand", R"({"lpar":"LPAR1","mib":64})") ==
          "LPAR1: 128 MiB + 64 MiB is more than its maximum of 160 MiB (max_size_mib)");
    CHECK(refused("storage.expand", R"({"lpar":"LPAR1","mib":32})") ==
          "LPAR1: grown area 0-160 MiB overlaps LPAR2 at 128-384 MiB");
    CHECK(refused("storage.shrink", R"({"lpar":"LPAR1","mib":2})") ==
          "LPAR1: only 0 MiB was added by EXPAND; its boot storage (128 MiB) cannot shrink");
    // grow refuses beyond the maximum before it moves anybody.
    CHECK(refused("storage.grow", R"({"lpar":"LPAR1","mib":64})") ==
          "LPAR1: 128 MiB + 64 MiB is more than its maximum of 160 MiB (max_size_mib)");
    CHECK(api.status.lpars[1].origin_mib == 128);
    // An odd size never passes the JSON-RPC layer; the Api refuses it too.
    ResizeRequest odd;
    odd.lpar = "LPAR1";
    odd.mib = 3;
    CHECK_THROWS_WITH(api.expand(odd), "LPAR1: expand by 3 MiB: a positive multiple of 2 MiB");
    CHECK(error_of(call(api, request_for("storage.shrink", R"({"lpar":"LPAR9","mib":2})")))
              .at("code") == -32001);
    // A notification gets no answer, error or not.
    api.throw_next(ErrorKind::Busy, "held");
    CHECK(
        handle_line(
            api, R"({"jsonrpc":"2.0","method":"storage.expand","params":{"lpar":"LPAR1","mib":2}})")
            .empty());
}
