// Python bindings for the image component.
#include <pybind11/pybind11.h>

namespace py = pybind11;

void bind_image(py::module_ & mod) { (void) mod; }
