// ThreadSanitizer's view of main storage. Guest storage is written by vCPUs that TSan cannot see,
// and by devices while the mover copies it: whether such a write is lost is the dirty log's
// business (the guests verify it), not a data race in the C++ sense. So the bulk copies of guest
// storage run with TSan's memory checks off: checking them could only report those by-design
// races, and costs TSan shadow memory for all of main storage (enough to exhaust the 2 GiB
// nested-KVM guest the TSan stress test runs in). The scope is a no-op in other builds.
#pragma once

#if defined(__SANITIZE_THREAD__)
#define LPARVISOR_TSAN_BUILD 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define LPARVISOR_TSAN_BUILD 1
#endif
#endif

#if defined(LPARVISOR_TSAN_BUILD)
// The runtime's dynamic-annotation entry points (libtsan exports them).
extern "C" void AnnotateIgnoreReadsBegin(const char* file, int line);
extern "C" void AnnotateIgnoreReadsEnd(const char* file, int line);
extern "C" void AnnotateIgnoreWritesBegin(const char* file, int line);
extern "C" void AnnotateIgnoreWritesEnd(const char* file, int line);
#endif

namespace lparvisor {

// While alive, this thread's memory accesses (memcpy and memset included) are not checked.
class TsanIgnoreGuestStorage {
  public:
#if defined(LPARVISOR_TSAN_BUILD)
    TsanIgnoreGuestStorage() {
        AnnotateIgnoreReadsBegin(__FILE__, __LINE__);
        AnnotateIgnoreWritesBegin(__FILE__, __LINE__);
    }
    ~TsanIgnoreGuestStorage() {
        AnnotateIgnoreWritesEnd(__FILE__, __LINE__);
        AnnotateIgnoreReadsEnd(__FILE__, __LINE__);
    }
#else
    // User-provided, so that a scope variable is not "unused" in other builds.
    TsanIgnoreGuestStorage() {
    }
    ~TsanIgnoreGuestStorage() {
    }
#endif
    TsanIgnoreGuestStorage(const TsanIgnoreGuestStorage&) = delete;
    TsanIgnoreGuestStorage& operator=(const TsanIgnoreGuestStorage&) = delete;
};

}  // namespace lparvisor
