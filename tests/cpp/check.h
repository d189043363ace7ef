// A minimal test harness: tests register themselves with TEST(name), the CHECK macros record
// failures without stopping the test (so one run shows every mismatch), and CHECK_MAIN() gives
// the executable a main that runs all tests or the ones named on the command line:
//   test_x            run every test
//   test_x a b        run tests a and b (an unknown name is an error, so a typo never passes)
//   test_x --list     print the test names
// Exit status: 0 when every check passed, 1 on any failure, 2 on a bad command line.
#pragma once

#include "minicpm/error.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <sstream>
#include <string>
#include <vector>

namespace check {

struct TestCase {
    const char * name;
    void (*fn)();
};

inline std::vector<TestCase> & registry() {
    static std::vector<TestCase> tests;
    return tests;
}

struct Registrar {
    Registrar(const char * name, void (*fn)()) { registry().push_back({name, fn}); }
};

// Failed checks of the test that is running.
inline int & n_failed_checks() {
    static int n = 0;
    return n;
}

inline void report(const char * file, int line, const std::string & what) {
    std::fprintf(stderr, "  %s:%d: %s\n", file, line, what.c_str());
    ++n_failed_checks();
}

// Thrown by REQUIRE to end a test whose later checks would only repeat the failure (or crash).
struct Abort {};

template <typename A, typename B>
std::string near_message(const char * a_src, const char * b_src, A a, B b, double tol, const std::string & where) {
    std::ostringstream os;
    os.precision(9);
    os << "CHECK_NEAR(" << a_src << ", " << b_src << "): " << a << " vs " << b << ", difference "
       << std::fabs((double) a - (double) b) << " > " << tol << where;
    return os.str();
}

// CHECK_VERBOSE=1 in the environment prints the message of every expected error, to review
// what users would read.
inline void show_expected_error(const char * expr, const char * what) {
    static const bool verbose = std::getenv("CHECK_VERBOSE") != nullptr;
    if (verbose) std::printf("    %s\n      -> %s\n", expr, what);
}

inline const char * kind_name(minicpm::ErrorKind k) {
    switch (k) {
        case minicpm::ErrorKind::File: return "File";
        case minicpm::ErrorKind::Format: return "Format";
        case minicpm::ErrorKind::Unsupported: return "Unsupported";
        case minicpm::ErrorKind::InvalidArgument: return "InvalidArgument";
        case minicpm::ErrorKind::ContextFull: return "ContextFull";
        case minicpm::ErrorKind::Backend: return "Backend";
        case minicpm::ErrorKind::Busy: return "Busy";
        case minicpm::ErrorKind::Internal: return "Internal";
    }
    return "?";
}

inline int run(int argc, char ** argv) {
    std::vector<const TestCase *> selected;
    for (int i = 1; i < argc; ++i) {
        if (std::strcmp(argv[i], "--list") == 0) {
            for (const auto & t : registry()) std::printf("%s\n", t.name);
            return 0;
        }
        const TestCase * found = nullptr;
        for (const auto & t : registry()) {
            if (std::strcmp(t.name, argv[i]) == 0) found = &t;
        }
        if (!found) {
            std::fprintf(stderr, "no test named '%s' (--list shows them)\n", argv[i]);
            return 2;
        }
        selected.push_back(found);
    }
    if (selected.empty()) {
        for (const auto & t : registry()) selected.push_back(&t);
    }
    std::vector<const char *> failed;
    for (const TestCase * t : selected) {
        std::printf("[ RUN  ] %s\n", t->name);
        std::fflush(stdout);
        n_failed_checks() = 0;
        try {
            t->fn();
        } catch (const Abort &) {
            // already reported
        } catch (const std::exception & e) {
            report(__FILE__, __LINE__, std::string("unexpected exception: ") + e.what());
        } catch (...) {
            report(__FILE__, __LINE__, "unexpected exception of unknown type");
        }
        const bool ok = n_failed_checks() == 0;
        std::printf("[ %s ] %s\n", ok ? " OK " : "FAIL", t->name);
        std::fflush(stdout);
        if (!ok) failed.push_back(t->name);
    }
    std::printf("%zu tests, %zu passed, %zu failed\n", selected.size(), selected.size() - failed.size(),
                failed.size());
    for (const char * name : failed) std::printf("  failed: %s\n", name);
    return failed.empty() ? 0 : 1;
}

} // namespace check

#define CHECK_CONCAT_(a, b) a##b
#define CHECK_CONCAT(a, b) CHECK_CONCAT_(a, b)

#define TEST(name)                                                                  \
    static void name();                                                             \
    static const ::check::Registrar CHECK_CONCAT(check_registrar_, name)(#name, name); \
    static void name()

#define CHECK_MAIN() \
    int main(int argc, char ** argv) { return ::check::run(argc, argv); }

#define CHECK(cond)                                                   \
    do {                                                              \
        if (!(cond)) ::check::report(__FILE__, __LINE__, "CHECK(" #cond ")"); \
    } while (0)

// CHECK that also ends the test when it fails.
#define REQUIRE(cond)                                                                  \
    do {                                                                               \
        if (!(cond)) {                                                                 \
            ::check::report(__FILE__, __LINE__, "REQUIRE(" #cond ")");                  \
            throw ::check::Abort{};                                                    \
        }                                                                              \
    } while (0)

#define CHECK_EQ(a, b)                                                                               \
    do {                                                                                             \
        const auto & check_a_ = (a);                                                                 \
        const auto & check_b_ = (b);                                                                 \
        if (!(check_a_ == check_b_)) {                                                               \
            std::ostringstream check_os_;                                                            \
            check_os_ << "CHECK_EQ(" #a ", " #b "): " << check_a_ << " vs " << check_b_;              \
            ::check::report(__FILE__, __LINE__, check_os_.str());                                    \
        }                                                                                            \
    } while (0)

// |a - b| <= tol. CHECK_NEAR_AT adds a description of where (an index, a case name).
#define CHECK_NEAR_AT(a, b, tol, where)                                                              \
    do {                                                                                             \
        const double check_a_ = (double) (a), check_b_ = (double) (b), check_tol_ = (double) (tol); \
        if (!(std::fabs(check_a_ - check_b_) <= check_tol_)) {                                       \
            ::check::report(__FILE__, __LINE__,                                                      \
                            ::check::near_message(#a, #b, check_a_, check_b_, check_tol_, (where))); \
        }                                                                                            \
    } while (0)
#define CHECK_NEAR(a, b, tol) CHECK_NEAR_AT(a, b, tol, std::string())

// expr must throw minicpm::Error of the given kind whose message contains `substr`.
#define CHECK_THROWS_KIND_MSG(expr, error_kind, substr)                                              \
    do {                                                                                             \
        try {                                                                                        \
            (void) (expr);                                                                           \
            ::check::report(__FILE__, __LINE__, "expected minicpm::Error from " #expr ", nothing thrown"); \
        } catch (const ::minicpm::Error & check_e_) {                                                \
            ::check::show_expected_error(#expr, check_e_.what());                                    \
            if (check_e_.kind() != (error_kind)) {                                                   \
                ::check::report(__FILE__, __LINE__,                                                  \
                                std::string(#expr ": expected kind ") + ::check::kind_name(error_kind) + \
                                    ", got " + ::check::kind_name(check_e_.kind()) + ": " + check_e_.what()); \
            } else if (std::string(check_e_.what()).find(substr) == std::string::npos) {             \
                ::check::report(__FILE__, __LINE__,                                                  \
                                std::string(#expr ": message \"") + check_e_.what() +               \
                                    "\" does not contain \"" + (substr) + "\"");                    \
            }                                                                                        \
        } catch (const std::exception & check_e_) {                                                  \
            ::check::report(__FILE__, __LINE__,                                                      \
                            std::string(#expr ": expected minicpm::Error, got std::exception: ") +   \
                                check_e_.what());                                                    \
        }                                                                                            \
    } while (0)
#define CHECK_THROWS_KIND(expr, error_kind) CHECK_THROWS_KIND_MSG(expr, error_kind, "")
