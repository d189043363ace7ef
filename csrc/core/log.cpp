#include "log.h"

#include "ggml.h"

#include <atomic>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

namespace minicpm {

namespace {

LogLevel initial_level() {
    const char * env = std::getenv("MINICPM_LOG");
    if (!env) {
        return LogLevel::Warn;
    }
    if (!std::strcmp(env, "error")) return LogLevel::Error;
    if (!std::strcmp(env, "info")) return LogLevel::Info;
    if (!std::strcmp(env, "debug")) return LogLevel::Debug;
    return LogLevel::Warn;
}

std::atomic<int> g_level{(int) initial_level()};
std::mutex       g_err_mutex;
std::string      g_ggml_errors;

void ggml_log_cb(enum ggml_log_level level, const char * text, void * /*user*/) {
    if (level == GGML_LOG_LEVEL_ERROR || level == GGML_LOG_LEVEL_WARN) {
        std::lock_guard<std::mutex> lock(g_err_mutex);
        if (g_ggml_errors.size() < 4096) {
            g_ggml_errors += text;
        }
    }
    LogLevel ours = LogLevel::Debug;
    switch (level) {
        case GGML_LOG_LEVEL_ERROR: ours = LogLevel::Error; break;
        case GGML_LOG_LEVEL_WARN:  ours = LogLevel::Warn; break;
        case GGML_LOG_LEVEL_INFO:  ours = LogLevel::Info; break;
        default: break;
    }
    // ggml errors are reported through our exceptions; print them only when debugging.
    if (ours == LogLevel::Error) {
        ours = LogLevel::Debug;
    }
    if ((int) ours <= g_level.load()) {
        std::fputs(text, stderr);
    }
}

} // namespace

void set_log_level(LogLevel level) { g_level.store((int) level); }

LogLevel log_level() { return (LogLevel) g_level.load(); }

void log_msg(LogLevel level, const char * fmt, ...) {
    if ((int) level > g_level.load()) {
        return;
    }
    static const char * names[] = {"error", "warn", "info", "debug"};
    char buf[2048];
    va_list args;
    va_start(args, fmt);
    std::vsnprintf(buf, sizeof(buf), fmt, args);
    va_end(args);
    std::fprintf(stderr, "minicpm %s: %s\n", names[(int) level], buf);
}

void install_ggml_logger() {
    static std::once_flag once;
    std::call_once(once, [] { ggml_log_set(ggml_log_cb, nullptr); });
}

std::string take_ggml_errors() {
    std::lock_guard<std::mutex> lock(g_err_mutex);
    std::string out;
    out.swap(g_ggml_errors);
    while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) {
        out.pop_back();
    }
    return out;
}

} // namespace minicpm
