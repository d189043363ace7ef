// A chat from C++: load a model, ask one question (optionally about an image), stream the answer.
//
//   minicpm-chat MODEL.gguf [-p PROMPT] [--image FILE.ppm] [--mmproj FILE] [-n N] [--temp T]
//                [--seed S] [-t THREADS] [--think | --no-think]
//                [--speak -o OUT.wav [--voice FILE.voice.gguf] [--tts-steps N] [--whole] [--pcm-out FILE.f32]]
//
// --speak (MiniCPM-o 4.5) speaks the answer (Session::speak, minicpm/speech.h): the text is
// printed as it comes, the 24 kHz audio written as a 16-bit WAV (-o; --pcm-out also writes the
// float32 samples raw). The voice is a file saved with the Python layer's Voice.save (default:
// the model file's own voice); --tts-steps sets the flow-matching steps (10; 5 and 3 are faster);
// --whole synthesises the answer in one piece instead of 1 s windows.
//
// Images are binary PPM (P6, 8-bit RGB): any tool writes them (`convert x.jpg x.ppm`,
// Pillow's Image.save("x.ppm")); decoding other formats is the application's job. Sampling
// values not given take the model's defaults (the reference chat()'s, recorded in the GGUF).
// Built with -DMINICPM_BUILD_EXAMPLES=ON (see README "C++").
#include "minicpm/minicpm.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

namespace {

// Reads a binary PPM (P6, maxval 255) into an RGB image; throws minicpm::Error on bad input.
std::shared_ptr<minicpm::RgbImage> read_ppm(const std::string & path) {
    using minicpm::Error;
    using minicpm::ErrorKind;
    std::ifstream f(path, std::ios::binary);
    if (!f) throw Error(ErrorKind::File, "cannot open image " + path);
    auto token = [&]() {
        std::string t;
        char c;
        while (f.get(c)) {
            if (c == '#') {
                std::string skip;
                std::getline(f, skip);
            } else if (std::isspace((unsigned char) c)) {
                if (!t.empty()) break;
            } else {
                t += c;
            }
        }
        return t;
    };
    if (token() != "P6") throw Error(ErrorKind::InvalidArgument, path + " is not a binary PPM (P6) image");
    auto number = [&](const char * what) {
        const std::string t = token();
        char * end = nullptr;
        const long v = std::strtol(t.c_str(), &end, 10);
        if (t.empty() || *end || v <= 0 || v > 1 << 16) {
            throw Error(ErrorKind::InvalidArgument, path + ": bad PPM " + what + " '" + t + "'");
        }
        return (int) v;
    };
    auto img = std::make_shared<minicpm::RgbImage>();
    img->width = number("width");
    img->height = number("height");
    if (number("maxval") != 255) throw Error(ErrorKind::Unsupported, path + ": only 8-bit PPM images are read");
    img->pixels.resize((size_t) img->width * (size_t) img->height * 3);
    if (!f.read((char *) img->pixels.data(), (std::streamsize) img->pixels.size())) {
        throw Error(ErrorKind::InvalidArgument, path + ": truncated PPM pixel data");
    }
    return img;
}

// Mono float PCM as a 16-bit PCM WAV file (round to nearest, clipped; 1.0 maps to 32767).
void write_wav(const std::string & path, const std::vector<float> & pcm, int sample_rate) {
    using minicpm::Error;
    using minicpm::ErrorKind;
    std::vector<int16_t> s(pcm.size());
    for (size_t i = 0; i < pcm.size(); ++i) {
        const double v = std::nearbyint((double) pcm[i] * 32767.0);
        s[i] = (int16_t) std::min(32767.0, std::max(-32768.0, v));
    }
    const uint32_t data = (uint32_t) (s.size() * 2);
    std::ofstream f(path, std::ios::binary);
    if (!f) throw Error(ErrorKind::File, "cannot write " + path);
    auto u32 = [&](uint32_t v) { for (int i = 0; i < 4; ++i) f.put((char) ((v >> (8 * i)) & 0xff)); };
    auto u16 = [&](uint16_t v) { f.put((char) (v & 0xff)); f.put((char) (v >> 8)); };
    f.write("RIFF", 4); u32(36 + data); f.write("WAVE", 4);
    f.write("fmt ", 4); u32(16); u16(1); u16(1); u32((uint32_t) sample_rate); u32((uint32_t) sample_rate * 2); u16(2); u16(16);
    f.write("data", 4); u32(data);
    for (int16_t v : s) u16((uint16_t) v);
    if (!f) throw Error(ErrorKind::File, "cannot write " + path);
}

int usage(const char * argv0) {
    std::fprintf(stderr, "usage: %s MODEL.gguf [-p PROMPT] [--image FILE.ppm] [--mmproj FILE] [-n N] [--temp T] "
                         "[--seed S] [-t THREADS] [--think|--no-think] [--speak -o OUT.wav [--voice FILE.voice.gguf] "
                         "[--tts-steps N] [--whole] [--pcm-out FILE.f32]]\n", argv0);
    return 2;
}

} // namespace

int main(int argc, char ** argv) {
    if (argc < 2) return usage(argv[0]);
    std::string model_path = argv[1], prompt = "Hello! Who are you?";
    std::vector<std::string> images;
    minicpm::ModelParams mp;
    mp.device = "cpu";
    minicpm::SessionParams sp;
    minicpm::ChatParams cp;
    bool speak = false;
    std::string wav_out, pcm_out, voice_path;
    minicpm::SpeechParams speech;
    for (int i = 2; i < argc; ++i) {
        const std::string a = argv[i];
        auto value = [&]() -> std::string {
            if (i + 1 >= argc) {
                std::fprintf(stderr, "%s needs a value\n", a.c_str());
                std::exit(2);
            }
            return argv[++i];
        };
        try {
            if (a == "-p") prompt = value();
            else if (a == "--image") images.push_back(value());
            else if (a == "--mmproj") mp.mmproj = value();
            else if (a == "-n") cp.generation.max_tokens = std::stoi(value());
            else if (a == "--temp") cp.generation.sampling.temperature = std::stof(value());
            else if (a == "--seed") sp.seed = std::stoull(value());
            else if (a == "-t") mp.n_threads = std::stoi(value());
            else if (a == "--device") mp.device = value();
            else if (a == "--think") cp.enable_thinking = true;
            else if (a == "--no-think") cp.enable_thinking = false;
            else if (a == "--speak") speak = true;
            else if (a == "-o") wav_out = value();
            else if (a == "--pcm-out") pcm_out = value();
            else if (a == "--voice") voice_path = value();
            else if (a == "--tts-steps") speech.n_timesteps = std::stoi(value());
            else if (a == "--whole") speech.whole_audio = true;
            else return usage(argv[0]);
        } catch (const std::logic_error &) {
            std::fprintf(stderr, "bad value for %s\n", a.c_str());
            return 2;
        }
    }
    if (speak && wav_out.empty()) {
        std::fprintf(stderr, "--speak needs -o OUT.wav\n");
        return 2;
    }
    try {
        minicpm::Message user;
        user.role = "user";
        for (const auto & path : images) user.content.push_back(minicpm::ContentPart::make_image(read_ppm(path)));
        user.content.push_back(minicpm::ContentPart::make_text(prompt));
        auto model = minicpm::Model::load(model_path, mp);
        minicpm::Session session(model, sp);
        if (speak) {
            if (!voice_path.empty()) speech.voice = minicpm::Voice::load(voice_path);
            minicpm::SpeechCallbacks cb;
            cb.on_text = [](const std::string & piece) { std::cout << piece << std::flush; };
            size_t n_chunks = 0;
            cb.on_audio = [&](const float *, size_t, int) { ++n_chunks; };
            const minicpm::SpeechResult r = session.speak({user}, cp, speech, cb);
            std::cout << std::endl;
            write_wav(wav_out, r.audio, r.sample_rate);
            if (!pcm_out.empty()) {
                std::ofstream f(pcm_out, std::ios::binary);
                f.write((const char *) r.audio.data(), (std::streamsize) (r.audio.size() * sizeof(float)));
                if (!f) throw minicpm::Error(minicpm::ErrorKind::File, "cannot write " + pcm_out);
            }
            std::fprintf(stderr, "speech: %zu codes, %.2f s at %d Hz in %zu chunks -> %s\n", r.codes.size(),
                         (double) r.audio.size() / r.sample_rate, r.sample_rate, n_chunks, wav_out.c_str());
            std::fprintf(stderr, "codes:");
            for (int32_t c : r.codes) std::fprintf(stderr, " %d", (int) c);
            std::fprintf(stderr, "\n");
        } else {
            session.chat({user}, cp, [](const std::string & piece) { std::cout << piece << std::flush; });
            std::cout << std::endl;
        }
        const minicpm::Timings & t = session.timings();
        std::fprintf(stderr, "prompt: %lld tokens in %.1f ms | generation: %lld tokens in %.1f ms | images: %lld\n",
                     (long long) t.n_prefill, t.prefill_ms, (long long) t.n_decode, t.decode_ms, (long long) t.n_images);
    } catch (const minicpm::Error & e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
    return 0;
}
