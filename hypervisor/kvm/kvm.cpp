#include "kvm/kvm.hpp"

#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>

#include <fmt/format.h>

#include "util/error.hpp"

namespace lparvisor::kvm {

namespace {

// linux-libc-dev 6.1 declares kvm_cpuid2's entries with __DECLARE_FLEX_ARRAY, which in C++
// wraps an empty struct (size 1): sizeof(kvm_cpuid2) becomes 12, the entries move to offset 12
// and the ioctl numbers encode the wrong size (KVM then answers EINVAL). Use the C layout.
struct CpuidHeader {
    std::uint32_t nent;
    std::uint32_t padding;
};
static_assert(sizeof(CpuidHeader) == 8);
constexpr unsigned long kGetSupportedCpuid = _IOWR(KVMIO, 0x05, CpuidHeader);
constexpr unsigned long kSetCpuid2 = _IOW(KVMIO, 0x90, CpuidHeader);

// The same trap for kvm_irq_routing: C++ sees sizeof 16 with the entries at offset 16, C sees
// 8 and 8. The kernel reads the entries right after the 8-byte header and decodes the ioctl
// number with size 8.
struct IrqRoutingHeader {
    std::uint32_t nr;
    std::uint32_t flags;
};
static_assert(sizeof(IrqRoutingHeader) == 8);
constexpr unsigned long kSetGsiRouting = _IOW(KVMIO, 0x6a, IrqRoutingHeader);
static_assert(kSetGsiRouting == 0x4008ae6aul, "KVM_SET_GSI_ROUTING as C encodes it");
static_assert(sizeof(kvm_irq_routing_entry) == 48 && alignof(kvm_irq_routing_entry) <= 8);
// The other structs these ioctls take have no flexible array: C and C++ agree on them.
static_assert(sizeof(kvm_irqfd) == 32 && sizeof(kvm_ioeventfd) == 64);
static_assert(sizeof(kvm_pit_config) == 64 && sizeof(kvm_irq_level) == 8);

// Header + entries in one block, as the two CPUID ioctls take them.
std::vector<std::uint8_t> cpuid_block(std::uint32_t entries) {
    std::vector<std::uint8_t> block(sizeof(CpuidHeader) + entries * sizeof(kvm_cpuid_entry2), 0);
    CpuidHeader header{entries, 0};
    std::memcpy(block.data(), &header, sizeof header);
    return block;
}

bool path_exists(const char* path) {
    struct stat st {};
    return ::stat(path, &st) == 0;
}

}  // namespace

Flavour detect_flavour() {
    if (path_exists("/sys/module/kvm_intel") || path_exists("/sys/module/kvm_amd"))
        return Flavour::Hardware;
    if (path_exists("/sys/module/kvm_pvm")) return Flavour::Pvm;
    return Flavour::Unknown;
}

const char* to_string(Flavour flavour) {
    switch (flavour) {
        case Flavour::Hardware:
            return "hardware KVM";
        case Flavour::Pvm:
            return "PVM (guest kernel code is emulated)";
        case Flavour::Unknown:
            break;
    }
    return "unknown KVM flavour";
}

std::optional<std::string> unavailable_reason() {
    int fd = ::open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        int saved = errno;
        std::string reason = std::string("/dev/kvm: ") + std::strerror(saved);
        if (saved == ENOENT && path_exists("/sys/module/kvm_pvm"))
            reason += " (kvm_pvm is loaded but did not bind: this host is itself a PVM guest)";
        return reason;
    }
    int version = ::ioctl(fd, KVM_GET_API_VERSION, 0);
    ::close(fd);
    if (version != KVM_API_VERSION)
        return "/dev/kvm: API version " + std::to_string(version) + ", expected " +
               std::to_string(KVM_API_VERSION);
    return std::nullopt;
}

System::System() {
    fd_.reset(::open("/dev/kvm", O_RDWR | O_CLOEXEC));
    if (!fd_.valid()) throw_errno("open /dev/kvm");
    int version = ::ioctl(fd_.get(), KVM_GET_API_VERSION, 0);
    if (version != KVM_API_VERSION)
        throw Error(ErrorKind::System,
                    "/dev/kvm: unsupported API version " + std::to_string(version));
    int size = ::ioctl(fd_.get(), KVM_GET_VCPU_MMAP_SIZE, 0);
    if (size < static_cast<int>(sizeof(kvm_run))) throw_errno("KVM_GET_VCPU_MMAP_SIZE");
    vcpu_mmap_size_ = static_cast<std::size_t>(size);
}

int System::check_extension(long capability) const {
    int r = ::ioctl(fd_.get(), KVM_CHECK_EXTENSION, capability);
    return r < 0 ? 0 : r;
}

std::vector<kvm_cpuid_entry2> System::supported_cpuid() const {
    for (std::uint32_t capacity = 128; capacity <= 4096; capacity *= 2) {
        auto block = cpuid_block(capacity);
        if (::ioctl(fd_.get(), kGetSupportedCpuid, block.data()) == 0) {
            CpuidHeader header;
            std::memcpy(&header, block.data(), sizeof header);
            std::vector<kvm_cpuid_entry2> entries(std::min(header.nent, capacity));
            std::memcpy(entries.data(), block.data() + sizeof header,
                        entries.size() * sizeof(kvm_cpuid_entry2));
            return entries;
        }
        if (errno != E2BIG) throw_errno("KVM_GET_SUPPORTED_CPUID");
    }
    throw Error(ErrorKind::System, "KVM_GET_SUPPORTED_CPUID: more than 4096 entries");
}

std::string describe_exit_reason(std::uint32_t reason) {
    switch (reason) {
        case KVM_EXIT_UNKNOWN:
            return "KVM_EXIT_UNKNOWN";
        case KVM_EXIT_EXCEPTION:
            return "KVM_EXIT_EXCEPTION";
        case KVM_EXIT_IO:
            return "KVM_EXIT_IO";
        case KVM_EXIT_HLT:
            return "KVM_EXIT_HLT";
        case KVM_EXIT_MMIO:
            return "KVM_EXIT_MMIO";
        case KVM_EXIT_SHUTDOWN:
            return "KVM_EXIT_SHUTDOWN";
        case KVM_EXIT_FAIL_ENTRY:
            return "KVM_EXIT_FAIL_ENTRY";
        case KVM_EXIT_INTR:
            return "KVM_EXIT_INTR";
        case KVM_EXIT_INTERNAL_ERROR:
            return "KVM_EXIT_INTERNAL_ERROR";
        case KVM_EXIT_SYSTEM_EVENT:
            return "KVM_EXIT_SYSTEM_EVENT";
        default:
            return "exit reason " + std::to_string(reason);
    }
}

Vcpu::Vcpu(Fd fd, Mapping run, unsigned index)
    : fd_(std::move(fd)), run_mapping_(std::move(run)), index_(index) {
    // SAFETY: the mapping is KVM_GET_VCPU_MMAP_SIZE bytes, at least sizeof(kvm_run).
    run_ = reinterpret_cast<kvm_run*>(run_mapping_.data());
}

void Vcpu::set_immediate_exit(bool on) noexcept {
    __atomic_store_n(&run_->immediate_exit, on ? 1 : 0, __ATOMIC_SEQ_CST);
}

Vcpu::RunResult Vcpu::run() {
    if (::ioctl(fd_.get(), KVM_RUN, 0) < 0) {
        int saved = errno;
        if (saved == EINTR || saved == EAGAIN) return {InterruptedExit{}, 0};
        return {OtherExit{run_->exit_reason}, saved};
    }
    // SAFETY: run_ is the vCPU's whole kvm_run mapping (mmap_size bytes, mapped in the
    // constructor); each exit's data offset below is checked against that size before use.
    auto* base = reinterpret_cast<std::uint8_t*>(run_);
    switch (run_->exit_reason) {
        case KVM_EXIT_IO: {
            std::size_t bytes = std::size_t{run_->io.size} * run_->io.count;
            std::size_t offset = run_->io.data_offset;
            if (offset + bytes > run_mapping_.size() || bytes == 0)
                return {OtherExit{run_->exit_reason}, 0};
            // SAFETY: [data_offset, +bytes) checked against the kvm_run mapping above.
            return {IoExit{run_->io.port, run_->io.direction == KVM_EXIT_IO_OUT,
                           std::span<std::uint8_t>(base + offset, bytes), run_->io.size,
                           run_->io.count},
                    0};
        }
        case KVM_EXIT_MMIO:
            return {MmioExit{GuestPhysAddr{run_->mmio.phys_addr}, run_->mmio.is_write != 0,
                             std::span<std::uint8_t>(run_->mmio.data,
                                                     std::min<std::size_t>(run_->mmio.len, 8))},
                    0};
        case KVM_EXIT_HLT:
            return {HltExit{}, 0};
        case KVM_EXIT_SHUTDOWN:
            return {ShutdownExit{}, 0};
        case KVM_EXIT_INTR:
            return {InterruptedExit{}, 0};
        case KVM_EXIT_FAIL_ENTRY:
            return {FailEntryExit{run_->fail_entry.hardware_entry_failure_reason}, 0};
        case KVM_EXIT_SYSTEM_EVENT:
            return {SystemEventExit{run_->system_event.type}, 0};
        case KVM_EXIT_INTERNAL_ERROR: {
            InternalErrorExit error{run_->internal.suberror, {}};
#ifdef KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES
            if (run_->internal.suberror == KVM_INTERNAL_ERROR_EMULATION &&
                (run_->emulation_failure.flags &
                 KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES)) {
                std::size_t n = std::min<std::size_t>(run_->emulation_failure.insn_size,
                                                      sizeof(run_->emulation_failure.insn_bytes));
                error.instruction_bytes.assign(run_->emulation_failure.insn_bytes,
                                               run_->emulation_failure.insn_bytes + n);
            }
#endif
            return {std::move(error), 0};
        }
        default:
            return {OtherExit{run_->exit_reason}, 0};
    }
}

kvm_regs Vcpu::get_regs() const {
    kvm_regs regs{};
    if (::ioctl(fd_.get(), KVM_GET_REGS, &regs) < 0) throw_errno("KVM_GET_REGS");
    return regs;
}

void Vcpu::set_regs(const kvm_regs& regs) {
    if (::ioctl(fd_.get(), KVM_SET_REGS, &regs) < 0) throw_errno("KVM_SET_REGS");
}

kvm_sregs Vcpu::get_sregs() const {
    kvm_sregs sregs{};
    if (::ioctl(fd_.get(), KVM_GET_SREGS, &sregs) < 0) throw_errno("KVM_GET_SREGS");
    return sregs;
}

void Vcpu::set_sregs(const kvm_sregs& sregs) {
    if (::ioctl(fd_.get(), KVM_SET_SREGS, &sregs) < 0) throw_errno("KVM_SET_SREGS");
}

std::optional<kvm_regs> Vcpu::try_get_regs() const noexcept {
    kvm_regs regs{};
    if (::ioctl(fd_.get(), KVM_GET_REGS, &regs) < 0) return std::nullopt;
    return regs;
}

std::optional<kvm_sregs> Vcpu::try_get_sregs() const noexcept {
    kvm_sregs sregs{};
    if (::ioctl(fd_.get(), KVM_GET_SREGS, &sregs) < 0) return std::nullopt;
    return sregs;
}

bool Vcpu::try_set_regs(const kvm_regs& regs) noexcept {
    return ::ioctl(fd_.get(), KVM_SET_REGS, &regs) == 0;
}

void Vcpu::set_cpuid(const std::vector<kvm_cpuid_entry2>& entries) {
    auto block = cpuid_block(static_cast<std::uint32_t>(entries.size()));
    std::memcpy(block.data() + sizeof(CpuidHeader), entries.data(),
                entries.size() * sizeof(kvm_cpuid_entry2));
    if (::ioctl(fd_.get(), kSetCpuid2, block.data()) < 0) throw_errno("KVM_SET_CPUID2");
}

void Vcpu::set_mp_state(std::uint32_t state) {
    kvm_mp_state mp{state};
    if (::ioctl(fd_.get(), KVM_SET_MP_STATE, &mp) < 0) throw_errno("KVM_SET_MP_STATE");
}

bool Vcpu::inject_exception(std::uint8_t vector) noexcept {
    kvm_vcpu_events events{};
    if (::ioctl(fd_.get(), KVM_GET_VCPU_EVENTS, &events) < 0) return false;
    events.exception.injected = 1;
    events.exception.nr = vector;
    events.exception.has_error_code = 0;
    events.exception.error_code = 0;
    events.flags = 0;  // only the exception: leave NMI, SIPI and the shadow as they are
    return ::ioctl(fd_.get(), KVM_SET_VCPU_EVENTS, &events) == 0;
}

std::uint64_t Vcpu::tsc_khz() const {
    int khz = ::ioctl(fd_.get(), KVM_GET_TSC_KHZ, 0);
    return khz > 0 ? static_cast<std::uint64_t>(khz) : 0;
}

std::optional<GuestPhysAddr> Vcpu::translate(std::uint64_t guest_virtual) const noexcept {
    kvm_translation translation{};
    translation.linear_address = guest_virtual;
    if (::ioctl(fd_.get(), KVM_TRANSLATE, &translation) < 0 || !translation.valid)
        return std::nullopt;
    return GuestPhysAddr{translation.physical_address};
}

Vm::Vm(const System& system) : system_(system) {
    // Retry on EINTR: KVM_CREATE_VM can be interrupted while the kernel sets up the VM.
    int fd;
    do {
        fd = ::ioctl(system.fd(), KVM_CREATE_VM, 0);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) throw_errno("KVM_CREATE_VM");
    fd_.reset(fd);
}

void Vm::set_memory_region(std::uint32_t slot, GuestPhysAddr guest_address, std::uint64_t size,
                           void* host_address, std::uint32_t flags) {
    kvm_userspace_memory_region region{};
    region.slot = slot;
    region.flags = flags;
    region.guest_phys_addr = guest_address.value;
    region.memory_size = size;
    // SAFETY: an address handed to KVM, not dereferenced here; the caller owns a mapping of `size`
    // bytes there for as long as the slot exists (the LPAR's guest window).
    region.userspace_addr = reinterpret_cast<std::uint64_t>(host_address);
    if (::ioctl(fd_.get(), KVM_SET_USER_MEMORY_REGION, &region) < 0)
        throw_errno("KVM_SET_USER_MEMORY_REGION slot " + std::to_string(slot));
}

void Vm::get_dirty_log(std::uint32_t slot, std::span<std::uint64_t> bitmap) {
    kvm_dirty_log log{};
    log.slot = slot;
    log.dirty_bitmap = bitmap.data();  // KVM overwrites all of it
    if (::ioctl(fd_.get(), KVM_GET_DIRTY_LOG, &log) < 0)
        throw_errno("KVM_GET_DIRTY_LOG slot " + std::to_string(slot));
}

Vm::DirtyLogMode Vm::enable_manual_dirty_log() {
    // KVM_CHECK_EXTENSION on the VM answers with the flags this KVM accepts.
    const int offered = ::ioctl(fd_.get(), KVM_CHECK_EXTENSION, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2);
    if (offered <= 0 || (offered & KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE) == 0)
        return DirtyLogMode::Legacy;
    const bool initially_set = (offered & KVM_DIRTY_LOG_INITIALLY_SET) != 0;
    kvm_enable_cap cap{};
    cap.cap = KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2;
    cap.args[0] = KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE |
                  (initially_set ? std::uint64_t{KVM_DIRTY_LOG_INITIALLY_SET} : 0);
    if (::ioctl(fd_.get(), KVM_ENABLE_CAP, &cap) < 0)
        throw_errno("KVM_ENABLE_CAP KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2");
    return initially_set ? DirtyLogMode::ManualProtectInitiallySet : DirtyLogMode::ManualProtect;
}

const char* Vm::name_of(DirtyLogMode mode) noexcept {
    switch (mode) {
        case DirtyLogMode::ManualProtectInitiallySet:
            return "manual-protect-initially-set";
        case DirtyLogMode::ManualProtect:
            return "manual-protect";
        case DirtyLogMode::Legacy:
            break;
    }
    return "legacy";
}

void Vm::clear_dirty_log(std::uint32_t slot, std::uint64_t first_page, std::uint64_t pages,
                         std::span<const std::uint64_t> bitmap) {
    if (pages == 0) return;
    if (first_page % 64 != 0 || pages > std::uint64_t{UINT32_MAX} || bitmap.size() * 64 < pages)
        throw Error(ErrorKind::InvalidArgument,
                    fmt::format("KVM_CLEAR_DIRTY_LOG slot {}: pages {}+{} with {} bitmap words",
                                slot, first_page, pages, bitmap.size()));
    kvm_clear_dirty_log clear{};
    clear.slot = slot;
    clear.first_page = first_page;
    clear.num_pages = static_cast<std::uint32_t>(pages);
    // KVM only reads it (the struct's pointer is not const).
    clear.dirty_bitmap = const_cast<std::uint64_t*>(bitmap.data());
    if (::ioctl(fd_.get(), KVM_CLEAR_DIRTY_LOG, &clear) < 0)
        throw_errno(
            fmt::format("KVM_CLEAR_DIRTY_LOG slot {} pages {}+{}", slot, first_page, pages));
}

std::unique_ptr<Vcpu> Vm::create_vcpu(unsigned index) {
    Fd fd(::ioctl(fd_.get(), KVM_CREATE_VCPU, static_cast<unsigned long>(index)));
    if (!fd.valid()) throw_errno("KVM_CREATE_VCPU " + std::to_string(index));
    void* run =
        ::mmap(nullptr, system_.vcpu_mmap_size(), PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
    if (run == MAP_FAILED) throw_errno("mmap kvm_run of vCPU " + std::to_string(index));
    return std::make_unique<Vcpu>(std::move(fd), Mapping(run, system_.vcpu_mmap_size()), index);
}

void Vm::create_irqchip() {
    if (::ioctl(fd_.get(), KVM_CREATE_IRQCHIP, 0) < 0) throw_errno("KVM_CREATE_IRQCHIP");
}

void Vm::create_pit2() {
    kvm_pit_config config{};
    config.flags = KVM_PIT_SPEAKER_DUMMY;
    if (::ioctl(fd_.get(), KVM_CREATE_PIT2, &config) < 0) throw_errno("KVM_CREATE_PIT2");
}

bool Vm::set_irq_line(std::uint32_t irq, bool level) noexcept {
    kvm_irq_level line{};
    line.irq = irq;
    line.level = level ? 1 : 0;
    return ::ioctl(fd_.get(), KVM_IRQ_LINE, &line) == 0;
}

void Vm::set_gsi_routing(const std::vector<kvm_irq_routing_entry>& entries) {
    // One buffer, header then entries, as the kernel copies it; uint64_t storage keeps the
    // entries (which hold 64-bit fields) aligned.
    std::size_t bytes = sizeof(IrqRoutingHeader) + entries.size() * sizeof(kvm_irq_routing_entry);
    std::vector<std::uint64_t> block((bytes + 7) / 8, 0);
    IrqRoutingHeader header{static_cast<std::uint32_t>(entries.size()), 0};
    std::memcpy(block.data(), &header, sizeof header);
    if (!entries.empty())
        std::memcpy(block.data() + 1, entries.data(),  // the header is exactly one uint64_t
                    entries.size() * sizeof(kvm_irq_routing_entry));
    if (::ioctl(fd_.get(), kSetGsiRouting, block.data()) < 0)
        throw_errno("KVM_SET_GSI_ROUTING (" + std::to_string(entries.size()) + " routes)");
}

namespace {

kvm_irqfd make_irqfd(int eventfd, std::uint32_t gsi, std::uint32_t flags) {
    kvm_irqfd irqfd{};
    irqfd.fd = static_cast<std::uint32_t>(eventfd);
    irqfd.gsi = gsi;
    irqfd.flags = flags;
    return irqfd;
}

kvm_ioeventfd make_ioeventfd(GuestPhysAddr gpa, std::uint32_t length, int eventfd,
                             std::uint32_t flags) {
    kvm_ioeventfd io{};
    io.addr = gpa.value;
    io.len = length;
    io.fd = eventfd;
    io.flags = flags;  // MMIO (no KVM_IOEVENTFD_FLAG_PIO), no datamatch
    return io;
}

std::string irqfd_what(const char* op, int eventfd, std::uint32_t gsi) {
    return std::string("KVM_IRQFD ") + op + " fd " + std::to_string(eventfd) + " gsi " +
           std::to_string(gsi);
}

std::string ioeventfd_what(const char* op, GuestPhysAddr gpa, std::uint32_t length, int eventfd) {
    char address[32];
    std::snprintf(address, sizeof address, "%#llx", static_cast<unsigned long long>(gpa.value));
    return std::string("KVM_IOEVENTFD ") + op + " " + address + "+" + std::to_string(length) +
           " fd " + std::to_string(eventfd);
}

}  // namespace

void Vm::assign_irqfd(int eventfd, std::uint32_t gsi) {
    kvm_irqfd irqfd = make_irqfd(eventfd, gsi, 0);
    if (::ioctl(fd_.get(), KVM_IRQFD, &irqfd) < 0) throw_errno(irqfd_what("assign", eventfd, gsi));
}

void Vm::deassign_irqfd(int eventfd, std::uint32_t gsi) {
    kvm_irqfd irqfd = make_irqfd(eventfd, gsi, KVM_IRQFD_FLAG_DEASSIGN);
    if (::ioctl(fd_.get(), KVM_IRQFD, &irqfd) < 0)
        throw_errno(irqfd_what("deassign", eventfd, gsi));
}

void Vm::assign_ioeventfd(GuestPhysAddr gpa, std::uint32_t length, int eventfd) {
    kvm_ioeventfd io = make_ioeventfd(gpa, length, eventfd, 0);
    if (::ioctl(fd_.get(), KVM_IOEVENTFD, &io) < 0)
        throw_errno(ioeventfd_what("assign", gpa, length, eventfd));
}

void Vm::deassign_ioeventfd(GuestPhysAddr gpa, std::uint32_t length, int eventfd) {
    kvm_ioeventfd io = make_ioeventfd(gpa, length, eventfd, KVM_IOEVENTFD_FLAG_DEASSIGN);
    if (::ioctl(fd_.get(), KVM_IOEVENTFD, &io) < 0)
        throw_errno(ioeventfd_what("deassign", gpa, length, eventfd));
}

// --- Binary statistics ---
BinaryStats Vcpu::open_stats() const {
    const int fd = ::ioctl(fd_.get(), KVM_GET_STATS_FD, 0);
    if (fd < 0) throw_errno("KVM_GET_STATS_FD on vCPU " + std::to_string(index_));
    return BinaryStats(Fd(fd), "vCPU " + std::to_string(index_) + " stats");
}

BinaryStats Vm::open_stats() const {
    if (system_.check_extension(KVM_CAP_BINARY_STATS_FD) <= 0)
        throw Error(ErrorKind::System, "KVM_GET_STATS_FD: this KVM lacks KVM_CAP_BINARY_STATS_FD");
    const int fd = ::ioctl(fd_.get(), KVM_GET_STATS_FD, 0);
    if (fd < 0) throw_errno("KVM_GET_STATS_FD on the VM");
    return BinaryStats(Fd(fd), "VM stats");
}

}  // namespace lparvisor::kvm
