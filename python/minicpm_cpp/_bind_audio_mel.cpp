// Python bindings for the log-mel features (csrc/preprocess/audio_mel.h).
//
// Exposed in minicpm_cpp._core (features are float32 [80, n_frames], the reference's layout):
//
//   log_mel(pcm, n_threads=1) -> [80, ceil(len / 160)]     one clip of 1..480000 samples (<= 30 s),
//                                                         the reference's offline (chat) features
//   log_mel_pieces(pcm, n_threads=1) -> [[80, F], ...]     any length, one array per 30 s piece
//   mel_filters() -> [80, 201]                             the Slaney mel filter bank
//   StreamingMel(chunk_ms=1000, first_chunk_ms=1035, cnn_redundancy_ms=0, sliding_window=True,
//                slide_trigger_s=30.0, slide_stride_s=10.0, pad_first_chunk=True)
//       .push(pcm, is_last=False) -> [80, n]               StreamingMelProcessorExact.process
//       .flush() -> [80, n]                                its flush()
//       .reset()
//       .next_chunk_samples, .frames_emitted, .buffered_samples
//
// `pcm` is a 1-D numpy float32 array of 16 kHz mono samples (a non-contiguous one is copied);
// any other dtype or shape, an empty clip and NaN/inf samples raise InvalidArgumentError.
// The GIL is released while offline features are computed; a StreamingMel keeps it (a push
// takes well under a millisecond), which also serialises use from several threads.
#include "minicpm/error.h"
#include "preprocess/audio_mel.h"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <utility>
#include <vector>

namespace py = pybind11;
using namespace minicpm;

namespace {

[[noreturn]] void invalid(const std::string & msg) {
    throw Error(ErrorKind::InvalidArgument, msg);
}

py::array_t<float, py::array::c_style> as_pcm(const py::handle & obj) {
    if (!py::isinstance<py::array>(obj)) {
        invalid(std::string("pcm must be a 1-D numpy float32 array, got ") + Py_TYPE(obj.ptr())->tp_name);
    }
    py::array a = py::reinterpret_borrow<py::array>(obj);
    if (!a.dtype().is(py::dtype::of<float>())) {
        invalid("pcm must have dtype float32, got " + py::str(a.dtype()).cast<std::string>() +
                " (convert with pcm.astype(numpy.float32))");
    }
    if (a.ndim() != 1) {
        invalid("pcm must be 1-D (mono samples), got " + std::to_string(a.ndim()) + " dimensions");
    }
    auto out = py::array_t<float, py::array::c_style>::ensure(a);
    if (!out) throw py::error_already_set();
    return out;
}

// Moves features into a [kMelBins, n_frames] array without copying them.
py::array_t<float> to_array(MelFeatures && m) {
    auto *      heap = new std::vector<float>(std::move(m.data));
    py::capsule owner(heap, [](void * p) { delete static_cast<std::vector<float> *>(p); });
    return py::array_t<float>({(py::ssize_t) kMelBins, (py::ssize_t) m.n_frames}, heap->data(), owner);
}

} // namespace

void bind_audio_mel(py::module_ & mod) {
    mod.def("log_mel", [](const py::object & pcm, int n_threads) {
        auto        a = as_pcm(pcm);
        MelFeatures m;
        {
            py::gil_scoped_release nogil;
            m = log_mel_clip(a.data(), (size_t) a.size(), n_threads);
        }
        return to_array(std::move(m));
    }, py::arg("pcm"), py::arg("n_threads") = 1,
       "Offline log-mel features [80, ceil(n / 160)] of one clip of at most 30 s (16 kHz float32).");

    mod.def("log_mel_pieces", [](const py::object & pcm, int n_threads) {
        auto                     a = as_pcm(pcm);
        std::vector<MelFeatures> pieces;
        {
            py::gil_scoped_release nogil;
            pieces = log_mel_pieces(a.data(), (size_t) a.size(), n_threads);
        }
        py::list out;
        for (auto & p : pieces) out.append(to_array(std::move(p)));
        return out;
    }, py::arg("pcm"), py::arg("n_threads") = 1,
       "Offline log-mel features of a clip of any length: one [80, F] array per 30 s piece.");

    mod.def("mel_filters", [] {
        const std::vector<float> & f = mel_filter_bank();
        py::array_t<float>         out({(py::ssize_t) kMelBins, (py::ssize_t) kMelFreqBins});
        std::copy(f.begin(), f.end(), out.mutable_data());
        return out;
    }, "The 80 x 201 Slaney mel filter bank (librosa.filters.mel(sr=16000, n_fft=400, n_mels=80)).");

    py::class_<StreamingMel>(mod, "StreamingMel")
        .def(py::init([](int chunk_ms, int first_chunk_ms, int cnn_redundancy_ms, bool sliding_window,
                         double slide_trigger_s, double slide_stride_s, bool pad_first_chunk) {
            StreamingMelConfig c;
            c.chunk_ms          = chunk_ms;
            c.first_chunk_ms    = first_chunk_ms;
            c.cnn_redundancy_ms = cnn_redundancy_ms;
            c.sliding_window    = sliding_window;
            c.slide_trigger_s   = slide_trigger_s;
            c.slide_stride_s    = slide_stride_s;
            c.pad_first_chunk   = pad_first_chunk;
            return StreamingMel(c);
        }), py::arg("chunk_ms") = 1000, py::arg("first_chunk_ms") = 1035, py::arg("cnn_redundancy_ms") = 0,
            py::arg("sliding_window") = true, py::arg("slide_trigger_s") = 30.0, py::arg("slide_stride_s") = 10.0,
            py::arg("pad_first_chunk") = true)
        .def("push", [](StreamingMel & s, const py::object & pcm, bool is_last) {
            auto a = as_pcm(pcm);
            return to_array(s.push(a.data(), (size_t) a.size(), is_last));
        }, py::arg("pcm"), py::arg("is_last") = false,
           "Append samples; returns the frames [80, n] this chunk emits (n = 0 while it waits for more).")
        .def("flush", [](StreamingMel & s) { return to_array(s.flush()); },
             "Every frame of the buffer not emitted yet, [80, n].")
        .def("reset", &StreamingMel::reset)
        .def_property_readonly("next_chunk_samples", &StreamingMel::next_chunk_samples)
        .def_property_readonly("frames_emitted", &StreamingMel::frames_emitted)
        .def_property_readonly("buffered_samples", &StreamingMel::buffered_samples);
}
