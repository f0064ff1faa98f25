// libFuzzer target for the HTTP listener's request handling (control/http_server.hpp): the bytes a
// client sends on one connection, read as the server's Session reads them, each request answered
// by HttpHandler over tests/control/fake_api.hpp's FakeApi with a fixed token. No socket: the
// Session's http::async_read is replayed on the input (a Beast request_parser with HttpLimits{}'s
// header and body limits, eager, put() the buffer, read more while it needs more, put_eof() at the
// end of the input), one buffer kept across requests as the Session keeps it, so pipelined
// requests follow each other. Requests go on (keep-alive) until a response closes the
// connection, a parse error (the server answers 413 / 431 / 400 and closes: only counted here),
// an /events request (the stream itself is not run), or the end of the input.
//
// Input: u8 flags, u8 split seed, then the byte stream.
//   flags bit 0:     the listener is bound to loopback (loopback_only: Host is checked)
//   flags bits 1-3:  1-5: the FakeApi throws this ErrorKind (InvalidArgument, NotFound, Refused,
//                    Busy, System) from its next call, before each request picked by bits 4-7
//   flags bits 4-7:  request i gets that throw when bit (4 + i % 4) is set
//   split seed:      0: everything arrives in one read; else the read sizes (1-64 bytes, one in 16
//                    up to 4 KiB) come from it
// Invariants beyond "no crash, no sanitizer report", for every response (the event stream's
// refusal included): its status is one the handler uses; it has a non-empty body, a
// Content-Length equal to the body's size, no Transfer-Encoding, and a Content-Type, text/plain
// unless the status is 200; a 405 says what is Allowed; a request that asks to close gets a
// response that closes. A POST /api/call without exactly "Authorization: Bearer TOKEN" is never
// 200, and no request but an authorized POST /api/call reaches an operation of the Api (the
// FakeApi's records of mvstor, lifecycle, exchange, expand ... calls do not grow). A 200 on
// /api/call is one JSON-RPC 2.0 response (an id and exactly one of result / error); a 200 on
// /api/lpars or /api/stats is a JSON object; a 200 on /metrics is Prometheus text (every line a
// comment or `name{labels} value` / `name value`, label values escaped). A loopback-only
// listener answers anything but 421 only to a Host that names a loopback address (localhost,
// 127.x.y.z, [::1]; any port): another name may be an attacker's, rebound to 127.0.0.1.
#include <arpa/inet.h>
#include <netinet/in.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include <boost/asio/buffer.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/string_body.hpp>
#include <nlohmann/json.hpp>

#include "control/http_server.hpp"
#include "fake_api.hpp"
#include "fuzz_support.hpp"
#include "util/error.hpp"

namespace {

using namespace lparvisor;
using namespace lparvisor::control;
namespace beast = boost::beast;
namespace http = boost::beast::http;
using json = nlohmann::json;
using Parser = http::request_parser<http::string_body>;

const std::string kToken = "00112233445566778899aabbccddeeff0123456789abcdeffedcba9876543210";
constexpr std::array<unsigned, 12> kStatuses{200, 400, 401, 403, 404, 405,
                                             413, 421, 431, 500, 503, 505};
constexpr std::array<ErrorKind, 5> kThrows{ErrorKind::InvalidArgument, ErrorKind::NotFound,
                                           ErrorKind::Refused, ErrorKind::Busy, ErrorKind::System};

std::string_view view(beast::string_view s) {
    return {s.data(), s.size()};
}

std::string_view path_of(std::string_view target) {
    return target.substr(0, target.find('?'));
}

// The client's bytes as the socket hands them to the Session: reads of the sizes the split seed
// picks, then EOF (the client closed, or went quiet until the server's timeout: either way the
// connection ends there).
class Socket {
  public:
    Socket(std::string_view bytes, std::uint8_t seed)
        : bytes_(bytes), whole_(seed == 0), seed_(seed * 2654435761u + 1) {}
    // Appends the next read to `buffer`; false at EOF.
    bool read(std::string& buffer) {
        if (bytes_.empty()) return false;
        std::size_t n = bytes_.size();
        if (!whole_) {
            seed_ = seed_ * 1103515245u + 12345u;
            const unsigned r = (seed_ >> 16) & 0xffff;
            n = std::min<std::size_t>(n, r < 0x1000 ? 1 + r : 1 + r % 64);
        }
        buffer.append(bytes_.substr(0, n));
        bytes_.remove_prefix(n);
        return true;
    }

  private:
    std::string_view bytes_;
    bool whole_;
    std::uint32_t seed_;
};

// One http::async_read(stream, buffer, parser) of the Session (Beast's read_op / read_some_op):
// put() what the buffer holds, read more while the parser needs more; at EOF, put_eof() if the
// request had begun, else end_of_stream (the client closed between requests).
beast::error_code read_request(Socket& socket, std::string& buffer, Parser& parser) {
    beast::error_code ec;
    while (!parser.is_done()) {
        if (!buffer.empty()) {
            const std::size_t used =
                parser.put(boost::asio::const_buffer(buffer.data(), buffer.size()), ec);
            buffer.erase(0, used);
            if (ec && ec != http::error::need_more) return ec;
            if (!ec) {
                // Beast's read loop would put() the same bytes again, forever.
                fuzz::check(used > 0 || parser.is_done(),
                            "the parser took nothing and asked for nothing: the read would spin");
                continue;
            }
        }
        if (!socket.read(buffer)) {
            if (!parser.got_some()) return http::error::end_of_stream;
            parser.put_eof(ec);  // partial_message, or a request that ends here
            return ec;
        }
    }
    return {};
}

// What the Session answers to a read error (and then closes).
unsigned status_for(const beast::error_code& ec) {
    if (ec == http::error::body_limit) return 413;
    if (ec == http::error::header_limit) return 431;
    return 400;
}

// The FakeApi's records of the calls that change something: a request that must not reach an
// operation leaves them as they were.
struct Records {
    std::size_t mvstor, lifecycle, exchange, expand, shrink, grow, cancel, defined, console;
    static Records of(const test::FakeApi& api) {
        return {
            api.mvstor_requests.size(), api.lifecycle_calls.size(), api.exchange_requests.size(),
            api.expand_requests.size(), api.shrink_requests.size(), api.grow_requests.size(),
            api.cancel_calls.size(),    api.defined.size(),         api.console_requests.size()};
    }
    bool operator==(const Records&) const = default;
};

// Counters with every character a label value must escape, an LPAR whose name is not UTF-8
// (/api/lpars must still be JSON), and room for LPAR2 to EXPAND (so that an operation succeeds).
void set_up(test::FakeApi& api) {
    SystemStats stats;
    stats.largest_free_gap_mib = 125;
    stats.uptime_us = 2'500'000;
    LparStats lpar;
    lpar.name = "LPAR\"2\\\n";
    lpar.state = "running";
    lpar.guest = "fir\"mware";
    lpar.has_storage = true;
    lpar.origin_mib = 128;
    lpar.size_mib = 256;
    lpar.ipl = 1;
    lpar.vcpu_exits = {{"io", 41}, {"mm\\io\n", 0}};
    lpar.vcpu_run_us = 1'500'000;
    stats.lpars.push_back(lpar);
    stats.operations.push_back({"mvstor", {{"ok", 3}, {"refused", 1}}, 805306368, 4096});
    stats.pauses = {{100, 1000}, {1, 2}, 3, 1600};
    api.stats_template = stats;
    api.status.lpars[1].max_size_mib = 384;
    api.status.lpars.push_back(
        {"LPAR\xff\xfe\"3", 0, 64, 0, "defined", false, "", 1, "linux", 64, 0});
}

// Whether a Host names a loopback address: localhost, an IPv4 literal in 127.0.0.0/8, or the IPv6
// literal ::1 (any spelling) or a v4-mapped 127.x.y.z, in brackets; a port does not matter here.
// Any other name could be an attacker's DNS name, rebound to 127.0.0.1.
bool names_loopback(std::string_view host) {
    std::string name(host);
    if (name.starts_with('[')) {
        const std::size_t close = name.find(']');
        if (close == std::string::npos) return false;
        if (close + 1 < name.size() && name[close + 1] != ':') return false;
        in6_addr address{};
        if (::inet_pton(AF_INET6, name.substr(1, close - 1).c_str(), &address) != 1) return false;
        return IN6_IS_ADDR_LOOPBACK(&address) ||
               (IN6_IS_ADDR_V4MAPPED(&address) && address.s6_addr[12] == 127);
    }
    if (const std::size_t colon = name.rfind(':'); colon != std::string::npos) name.resize(colon);
    std::transform(name.begin(), name.end(), name.begin(), [](char c) {
        return static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    });
    if (name == "localhost") return true;
    in_addr address{};
    return ::inet_pton(AF_INET, name.c_str(), &address) == 1 &&
           (ntohl(address.s_addr) >> 24) == 127;
}

// [a-zA-Z_:][a-zA-Z0-9_:]* (a metric name) or, without ':', a label name; advances `at`.
bool take_name(std::string_view line, std::size_t& at, bool colon) {
    auto ok = [&](char c, bool first) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
               (colon && c == ':') || (!first && c >= '0' && c <= '9');
    };
    if (at >= line.size() || !ok(line[at], true)) return false;
    while (at < line.size() && ok(line[at], false)) ++at;
    return true;
}

// `name{label="value",...} value` or `name value`, values with \\, \" and \n escaped.
bool is_sample(std::string_view line) {
    std::size_t at = 0;
    if (!take_name(line, at, true)) return false;
    if (at < line.size() && line[at] == '{') {
        ++at;
        for (bool first = true;; first = false) {
            if (first && at < line.size() && line[at] == '}') break;
            if (!take_name(line, at, false) || line.substr(at, 2) != "=\"") return false;
            for (at += 2; at < line.size() && line[at] != '"'; ++at) {
                if (line[at] != '\\') continue;
                if (++at >= line.size() || std::string_view("\\\"n").find(line[at]) == line.npos)
                    return false;
            }
            if (at >= line.size()) return false;  // no closing quote
            ++at;
            if (at < line.size() && line[at] == ',') {
                ++at;
                continue;
            }
            if (at < line.size() && line[at] == '}') break;
            return false;
        }
        ++at;  // the '}'
    }
    if (at >= line.size() || line[at] != ' ') return false;
    const std::string value(line.substr(at + 1));
    if (value == "+Inf" || value == "-Inf" || value == "NaN") return true;
    char* end = nullptr;
    std::strtod(value.c_str(), &end);
    return !value.empty() && end == value.c_str() + value.size();
}

void check_prometheus(std::string_view text) {
    fuzz::check(text.ends_with('\n'), "/metrics does not end with a newline");
    for (std::size_t start = 0; start < text.size();) {
        const std::size_t end = text.find('\n', start);
        const std::string_view line = text.substr(start, end - start);
        if (!line.starts_with('#'))
            fuzz::check(is_sample(line), "/metrics has a line that is neither comment nor sample");
        start = end + 1;
    }
}

void check_json_rpc(const std::string& body) {
    const auto message = json::parse(body, nullptr, false);
    fuzz::check(!message.is_discarded() && message.is_object(),
                "a 200 on /api/call is not a JSON object");
    fuzz::check(message.value("jsonrpc", "") == "2.0", "a 200 on /api/call without jsonrpc 2.0");
    fuzz::check(message.contains("id"), "a 200 on /api/call without an id");
    fuzz::check(message.contains("result") != message.contains("error"),
                "a 200 on /api/call without exactly one of result / error");
    fuzz::tally(message.contains("result") ? "call result" : "call error");
}

// Everything the header comment promises about one response to `request`.
void check_response(const HttpRequest& request, const HttpResponse& response, bool loopback_only,
                    const Records& before, const Records& after) {
    const unsigned status = response.result_int();
    fuzz::check(std::find(kStatuses.begin(), kStatuses.end(), status) != kStatuses.end(),
                "a status the handler does not use");
    fuzz::check(!response.body().empty(), "a response with an empty body");
    fuzz::check(
        view(response[http::field::content_length]) == std::to_string(response.body().size()),
        "Content-Length is not the body's size");
    fuzz::check(response.count(http::field::transfer_encoding) == 0,
                "a response with a Transfer-Encoding");
    const std::string_view type = view(response[http::field::content_type]);
    fuzz::check(!type.empty(), "a response without a Content-Type");
    if (status != 200)
        fuzz::check(type.starts_with("text/plain"), "an error response that is not text/plain");
    if (status == 405) fuzz::check(response.count(http::field::allow) == 1, "a 405 without Allow");
    if (!request.keep_alive())
        fuzz::check(response.need_eof(), "the client asked to close, the response keeps it open");
    if (loopback_only && status != 421)
        fuzz::check(names_loopback(view(request[http::field::host])),
                    "a loopback-only listener answered a Host that is not loopback");

    const std::string_view path = path_of(view(request.target()));
    const bool call = request.method() == http::verb::post && path == "/api/call";
    const bool authorized = view(request[http::field::authorization]) == "Bearer " + kToken;
    if (call && !authorized) fuzz::check(status != 200, "an operation without the token got 200");
    if (!(call && authorized))
        fuzz::check(before == after, "a request without the token reached an operation");
    if (status != 200) return;
    if (call) check_json_rpc(response.body());
    if (path == "/metrics") check_prometheus(response.body());
    if (path == "/api/lpars" || path == "/api/stats") {
        const auto body = json::parse(response.body(), nullptr, false);
        fuzz::check(!body.is_discarded() && body.is_object(), "/api/* answered 200 without JSON");
    }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    fuzz::quiet_logs();
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 2) return 0;
    const std::uint8_t flags = data[0];
    const bool loopback_only = (flags & 1) != 0;
    const unsigned throw_kind = (flags >> 1) & 7;
    // SAFETY: libFuzzer hands us `size` readable bytes; char aliasing of uint8_t is allowed.
    Socket socket({reinterpret_cast<const char*>(data + 2), size - 2}, data[1]);

    test::FakeApi api;
    set_up(api);
    HttpHandler handler(api, kToken, loopback_only);
    const HttpLimits limits;
    std::string buffer;  // the Session's flat_buffer: what one request left goes to the next
    for (unsigned index = 0;; ++index) {
        Parser parser;
        parser.header_limit(limits.max_header_bytes);
        parser.body_limit(limits.max_body_bytes);
        parser.eager(true);
        const beast::error_code ec = read_request(socket, buffer, parser);
        if (ec == http::error::end_of_stream) break;
        if (ec) {
            fuzz::tally("parse error " + std::to_string(status_for(ec)));
            break;
        }
        const HttpRequest request = parser.release();
        if (throw_kind >= 1 && throw_kind <= kThrows.size() && (flags >> (4 + index % 4)) & 1)
            api.throw_next(kThrows[throw_kind - 1], "thrown by the fuzzer \xff\xfe");

        const Records before = Records::of(api);
        HttpResponse response;
        if (handler.is_event_stream(request)) {
            auto refusal = handler.check_event_stream(request);
            if (!refusal) {
                if (loopback_only)
                    fuzz::check(names_loopback(view(request[http::field::host])),
                                "a loopback-only listener streams to a Host that is not loopback");
                fuzz::tally("event stream");
                break;  // the connection streams from here on
            }
            response = std::move(*refusal);
        } else {
            response = handler.handle(request);
        }
        check_response(request, response, loopback_only, before, Records::of(api));
        fuzz::tally("status " + std::to_string(response.result_int()));
        if (response.need_eof()) break;
    }
    return 0;
}
