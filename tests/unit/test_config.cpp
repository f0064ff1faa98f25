#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include "lpar/config.hpp"
#include "util/error.hpp"

using namespace lparvisor;
using nlohmann::json;

namespace {
json valid() {
    return json::parse(R"({"main_storage_mib": 509, "lpars": [
        {"name": "LPAR1", "origin_mib": 0, "size_mib": 128, "vcpus": 1, "firmware": "/fw"},
        {"name": "LPAR2", "origin_mib": 128, "size_mib": 256}]})");
}
void refused(const json& document, const std::string& message_part) {
    try {
        parse_config(document);
        FAIL("accepted: " << document.dump());
    } catch (const Error& e) {
        CHECK_THAT(e.what(), Catch::Contains(message_part));
        CHECK(e.kind() == ErrorKind::InvalidArgument);
    }
}
}  // namespace

TEST_CASE("a valid configuration parses and round-trips", "[config]") {
    auto config = parse_config(valid());
    CHECK(config.main_storage_mib == 509);
    REQUIRE(config.lpars.size() == 2);
    CHECK(config.lpars[0].firmware == "/fw");
    CHECK(config.lpars[1].vcpus == 1);
    CHECK(config.lpars[1].firmware.empty());
    auto again = parse_config(to_json(config));
    CHECK(again.lpars[1].origin_mib == 128);
    CHECK(to_json(again) == to_json(config));
}

TEST_CASE("the default configuration is Fig. 3A", "[config]") {
    auto config = fig3a_config();
    CHECK(config.main_storage_mib == 509);
    REQUIRE(config.lpars.size() == 2);
    CHECK(config.lpars[0].name == "LPAR1");
    CHECK(config.lpars[0].size_mib == 128);
    CHECK(config.lpars[1].origin_mib == 128);
    CHECK(config.lpars[1].size_mib == 256);
    CHECK_NOTHROW(parse_config(to_json(config)));
}

TEST_CASE("unknown keys and bad values are refused with the key's name", "[config]") {
    auto doc = valid();
    doc["colour"] = "blue";
    refused(doc, "colour: unknown key");
    doc = valid();
    doc["lpars"][1]["sizemib"] = 2;
    refused(doc, "lpars[1].sizemib: unknown parameter");
    doc = valid();
    doc["lpars"][0]["vcpus"] = 0;
    refused(doc, "lpars[0].vcpus: expected an integer from 1 to 8");
    doc = valid();
    doc["lpars"][0]["size_mib"] = "128";
    refused(doc, "lpars[0].size_mib: expected a non-negative integer");
    doc = valid();
    doc["lpars"][0]["origin_mib"] = -2;
    refused(doc, "lpars[0].origin_mib: expected a non-negative integer");
    doc = valid();
    doc["lpars"][0]["origin_mib"] = 1.5;
    refused(doc, "lpars[0].origin_mib: expected a non-negative integer");
    doc = valid();
    doc["lpars"][1].erase("size_mib");
    refused(doc, "lpars[1].size_mib: missing");
    doc = valid();
    doc["lpars"][1]["name"] = "bad name!";
    refused(doc, "lpars[1].name");
    doc = valid();
    doc["lpars"][1]["origin_mib"] = 100;
    refused(doc, "LPAR2: area 100-356 MiB overlaps LPAR1 at 0-128 MiB");
    doc = valid();
    doc["lpars"][1]["origin_mib"] = 129;
    refused(doc, "lpars[1].origin_mib: expected a multiple of 2 (2 MiB units)");
    doc = valid();
    doc["lpars"][1]["name"] = "LPAR1";
    refused(doc, "already exists");
    doc = valid();
    doc["lpars"][1]["active"] = "yes";
    refused(doc, "lpars[1].active: expected true or false");
    doc = valid();
    doc["main_storage_mib"] = 300;
    refused(doc, "lpars[1].origin_mib: 128-384 MiB ends beyond main storage (300 MiB)");
    refused(json::array(), "expected an object");
}
