// A chat from C++: load a model, ask one question (optionally about an image), stream the answer.
//
//   minicpm-chat MODEL.gguf [-p PROMPT] [--image FILE.ppm] [--mmproj FILE] [-n N] [--temp T]
//                [--seed S] [-t THREADS] [--think | --no-think]
//
// Images are binary PPM (P6, 8-bit RGB): any tool writes them (`convert x.jpg x.ppm`,
// Pillow's Image.save("x.ppm")); decoding other formats is the application's job. Sampling
// values not given take the model's defaults (the reference chat()'s, recorded in the GGUF).
// Built with -DMINICPM_BUILD_EXAMPLES=ON (see README "C++").
#include "minicpm/minicpm.h"

#include <cctype>
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

int usage(const char * argv0) {
    std::fprintf(stderr, "usage: %s MODEL.gguf [-p PROMPT] [--image FILE.ppm] [--mmproj FILE] [-n N] [--temp T] "
                         "[--seed S] [-t THREADS] [--think|--no-think]\n", argv0);
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
            else return usage(argv[0]);
        } catch (const std::logic_error &) {
            std::fprintf(stderr, "bad value for %s\n", a.c_str());
            return 2;
        }
    }
    try {
        minicpm::Message user;
        user.role = "user";
        for (const auto & path : images) user.content.push_back(minicpm::ContentPart::make_image(read_ppm(path)));
        user.content.push_back(minicpm::ContentPart::make_text(prompt));
        auto model = minicpm::Model::load(model_path, mp);
        minicpm::Session session(model, sp);
        session.chat({user}, cp, [](const std::string & piece) { std::cout << piece << std::flush; });
        std::cout << std::endl;
        const minicpm::Timings & t = session.timings();
        std::fprintf(stderr, "prompt: %lld tokens in %.1f ms | generation: %lld tokens in %.1f ms | images: %lld\n",
                     (long long) t.n_prefill, t.prefill_ms, (long long) t.n_decode, t.decode_ms, (long long) t.n_images);
    } catch (const minicpm::Error & e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
    return 0;
}
