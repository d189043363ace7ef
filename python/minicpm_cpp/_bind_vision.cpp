// Python bindings for the vision component.
#include <pybind11/pybind11.h>

namespace py = pybind11;

void bind_vision(py::module_ & mod) { (void) mod; }
