// libFuzzer target for the control protocol's JSON-RPC core: any bytes a client can send as one
// request line. Invariants checked beyond "no crash, no sanitizer report": every answer is exactly
// one line of valid JSON-RPC 2.0, and a notification is never answered.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "control/json_rpc.hpp"
#include "util/error.hpp"

namespace {

using namespace lparvisor;
using namespace lparvisor::control;

// Answers every method; the first input byte picks whether it throws, so the error paths run too.
class FuzzApi : public Api {
  public:
    explicit FuzzApi(std::uint8_t mode) : mode_(mode) {}

    SystemStatus list() override {
        maybe_throw();
        SystemStatus status;
        status.main_storage_mib = 509;
        status.free_mib = 125;
        status.lpars = {{"LPAR1", 0, 128, 0, "running", true, "", 1},
                        {"LPAR2", 128, 256, 125, "stopped", true, "guest exit 0", 2}};
        return status;
    }
    SystemStats stats() override {
        maybe_throw();
        SystemStats stats;
        stats.lpars.push_back({.name = "LPAR1", .vcpu_exits = {{"io", 3}}});
        stats.operations.push_back({.kind = "mvstor", .outcomes = {{"ok", 1}}});
        stats.pauses = {{100, 1000}, {0, 1}, 1, 900};
        return stats;
    }
    MvstorResult mvstor(const MvstorRequest& request) override {
        maybe_throw();
        MvstorResult result;
        result.lpar = request.lpar;
        result.new_origin_mib = request.origin_mib;
        result.phases = {{"copy", 1}};
        return result;
    }
    ConsoleText console(const std::string& lpar, std::optional<std::uint64_t> since,
                        std::size_t max_bytes) override {
        maybe_throw();
        std::string text = lpar + "\xff\xc0\x80 console \xe2\x82";  // invalid UTF-8 on purpose
        const std::size_t start =
            since ? static_cast<std::size_t>(std::min<std::uint64_t>(*since, text.size())) : 0;
        return {text.substr(start, max_bytes), start, 1};
    }
    std::size_t console_write(const std::string&, std::string_view bytes) override {
        maybe_throw();
        return bytes.size() / 2;
    }

    LparStatus define(const LparDefinition& definition) override {
        maybe_throw();
        return {definition.name,
                definition.origin_mib.value_or(0),
                definition.size_mib,
                0,
                "defined",
                false,
                "",
                definition.vcpus};
    }
    LparStatus activate(const std::string& lpar) override { return row(lpar, "running"); }
    LparStatus stop(const std::string& lpar) override { return row(lpar, "stopped"); }
    LparStatus start(const std::string& lpar) override { return row(lpar, "running"); }
    LparStatus reset(const std::string& lpar) override { return row(lpar, "running"); }
    LparStatus deactivate(const std::string& lpar) override { return row(lpar, "defined"); }
    void remove(const std::string&) override { maybe_throw(); }
    std::string system_config() override {
        maybe_throw();
        return mode_ % 8 == 3 ? "not json" : R"({"main_storage_mib":509,"lpars":[]})";
    }
    void cancel_mvstor(const std::string&) override { maybe_throw(); }
    ExchangeResult exchange(const ExchangeRequest& request) override {
        maybe_throw();
        return {request.a, request.b, 0, 0, 0, 0, 0, 0, 0, {}};
    }
    GrowPlanResult plan_grow(const std::string& name, std::uint64_t mib) override {
        maybe_throw();
        return {name, mib, false, {}, 0, "no", false, {}};
    }
    GrowPlanResult make_room(const std::string& name, std::uint64_t mib, MvstorMode) override {
        return plan_grow(name, mib);
    }
    ResizeResult expand(const ResizeRequest& request) override {
        maybe_throw();
        return {request.lpar, 128, 128 + request.mib, request.mib, 1000};
    }
    ResizeResult shrink(const ResizeRequest& request) override {
        maybe_throw();
        return {request.lpar, 192, 192 - request.mib, 0, 1000};
    }
    GrowResult grow(const ResizeRequest& request, MvstorMode mode) override {
        return {make_room(request.lpar, request.mib, mode), expand(request)};
    }
    std::unique_ptr<Subscription> subscribe(EventSink) override {
        maybe_throw();
        return std::make_unique<Subscription>();
    }

  private:
    LparStatus row(const std::string& lpar, const char* state) {
        maybe_throw();
        return {lpar, 128, 256, 125, state, std::string(state) != "defined", "", 1};
    }
    void maybe_throw() const {
        switch (mode_ % 4) {
            case 1:
                throw Error(ErrorKind::Busy, "busy \xff");
            case 2:
                throw std::runtime_error("internal");
            default:
                break;
        }
    }
    std::uint8_t mode_;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size == 0) return 0;
    FuzzApi api(data[0]);
    // SAFETY: libFuzzer hands us `size` readable bytes; char aliasing of uint8_t is allowed.
    const std::string_view line(reinterpret_cast<const char*>(data + 1), size - 1);

    const ParseOutcome outcome = parse_request(line);
    const bool notification = std::holds_alternative<ParsedCall>(outcome) &&
                              std::get<ParsedCall>(outcome).is_notification;
    const std::string response = handle_line(api, line);
    if (notification && !response.empty()) std::abort();
    if (response.empty()) return 0;
    if (response.find('\n') != std::string::npos) std::abort();
    const auto parsed = nlohmann::json::parse(response, nullptr, false);
    if (parsed.is_discarded() || !parsed.is_object() || parsed.value("jsonrpc", "") != "2.0" ||
        !parsed.contains("id") || (parsed.contains("result") == parsed.contains("error"))) {
        std::abort();
    }
    return 0;
}
