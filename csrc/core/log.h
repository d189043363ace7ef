// Minimal logging: level from set_log_level() or the MINICPM_LOG environment variable
// (error|warn|info|debug). ggml's own log lines are routed here too, and the last
// error-level ggml messages are kept so load failures can quote them.
#pragma once

#include <string>

namespace minicpm {

enum class LogLevel { Error = 0, Warn = 1, Info = 2, Debug = 3 };

void     set_log_level(LogLevel level);
LogLevel log_level();
void     log_msg(LogLevel level, const char * fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

// Installs the ggml log callback (idempotent).
void install_ggml_logger();
// Error/warning text ggml printed since the last call (then cleared).
std::string take_ggml_errors();

} // namespace minicpm

#define MINICPM_LOG_ERROR(...) ::minicpm::log_msg(::minicpm::LogLevel::Error, __VA_ARGS__)
#define MINICPM_LOG_WARN(...)  ::minicpm::log_msg(::minicpm::LogLevel::Warn, __VA_ARGS__)
#define MINICPM_LOG_INFO(...)  ::minicpm::log_msg(::minicpm::LogLevel::Info, __VA_ARGS__)
#define MINICPM_LOG_DEBUG(...) ::minicpm::log_msg(::minicpm::LogLevel::Debug, __VA_ARGS__)
