// Python bindings of the duplex KV window bookkeeping (runtime/duplex_window.h) over a Session:
// the C++ window that the duplex session runs, exposed as _core.DuplexWindow for its tests.
// Conversion and validation only.
#include "bind_common.h"
#include "minicpm/minicpm.h"
#include "runtime/duplex_window.h"

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

namespace py = pybind11;
using namespace minicpm;

void bind_duplex_window(py::module_ & mod) {
    py::class_<DuplexWindow>(mod, "DuplexWindow")
        .def(py::init([](Session & s, const std::string & mode, int max_tokens, int target_tokens, int max_units,
                         int max_previous_tokens, const std::string & marker) {
                 DuplexWindowConfig c;
                 c.mode = mode;
                 c.basic_high_tokens = max_tokens;
                 c.basic_low_tokens = target_tokens;
                 c.context_max_units = max_units;
                 c.context_previous_max_tokens = max_previous_tokens;
                 c.previous_marker = marker;
                 return new DuplexWindow(s, c);
             }),
             py::arg("session"), py::arg("mode") = "off", py::arg("max_tokens") = 4000, py::arg("target_tokens") = 3500,
             py::arg("max_units") = 24, py::arg("max_previous_tokens") = 500, py::arg("marker") = "\n\nprevious: ",
             py::keep_alive<1, 2>())
        .def("reset", &DuplexWindow::reset)
        .def("register_system_prompt", &DuplexWindow::register_system_prompt)
        .def("register_system_prompt_with_context", &DuplexWindow::register_system_prompt_with_context,
             py::arg("suffix_ids"))
        .def("register_unit_start", &DuplexWindow::register_unit_start)
        .def("register_unit_end", &DuplexWindow::register_unit_end, py::arg("type"), py::arg("tokens"),
             py::arg("is_listen"), py::arg("text"))
        .def("enforce", &DuplexWindow::enforce, py::call_guard<py::gil_scoped_release>())
        .def("set_special_ids", &DuplexWindow::set_special_ids, py::arg("ids"))
        .def_property_readonly("cache_length", &DuplexWindow::cache_length)
        .def_property_readonly("system_length", &DuplexWindow::system_length)
        .def_property_readonly("prefix_length", &DuplexWindow::prefix_length)
        .def_property_readonly("position_offset", &DuplexWindow::position_offset)
        .def_property_readonly("previous_text", &DuplexWindow::previous_text)
        .def_property_readonly("previous_tokens", &DuplexWindow::previous_tokens)
        .def_property_readonly("marker_tokens", &DuplexWindow::marker_tokens)
        .def_property_readonly("units", [](const DuplexWindow & w) {
            py::list out;
            for (const auto & u : w.units()) {
                py::dict d;
                d["unit_id"] = u.unit_id;
                d["length"] = u.length;
                d["type"] = u.type;
                d["generated_tokens"] = u.generated_tokens;
                d["generated_text"] = u.generated_text;
                d["is_listen"] = u.is_listen;
                out.append(d);
            }
            return out;
        })
        .def_property_readonly("stats", [](const DuplexWindow & w) {
            py::dict d;
            d["sliding_event_count"] = w.stats().sliding_events;
            d["total_dropped_tokens"] = w.stats().dropped_tokens;
            d["total_dropped_units"] = w.stats().dropped_units;
            return d;
        });
}
