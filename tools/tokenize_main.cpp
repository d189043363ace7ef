// Development driver for the tokenizer (not part of the library build).
//
//   tokenize_main MODEL.gguf encode [--no-special]   records in, one line of ids per record out
//   tokenize_main MODEL.gguf decode [--skip-special] lines of ids in, records out
//   tokenize_main MODEL.gguf stream-check            records in: encode, then check that
//                                                    StreamDecoder pieces add up to decode()
//   tokenize_main MODEL.gguf bench                   one record in: time encode
//   tokenize_main - nfc                              records in, NFC records out
//
// A record is "<byte count>\n<bytes>" so that any text, newlines included, passes unchanged.
// Build from the repository root, with GGML the directory of the libggml Python package:
//   g++ -std=c++17 -O2 -I csrc/include -I csrc -I csrc/preprocess -I $GGML/include
//       csrc/preprocess/tokenizer.cpp csrc/preprocess/unicode.cpp csrc/model/names.cpp
//       tools/tokenize_main.cpp -L $GGML/lib64 -lggml-base -Wl,-rpath,$GGML/lib64 -o tokenize_main
#include "core/error.h"
#include "tokenizer.h"
#include "unicode.h"

#include <gguf.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

namespace {

bool read_record(std::istream & in, std::string & out) {
    std::string header;
    if (!std::getline(in, header) || header.empty()) {
        return false;
    }
    const size_t n = std::stoul(header);
    out.resize(n);
    in.read(out.data(), (std::streamsize) n);
    return (size_t) in.gcount() == n;
}

void write_record(const std::string & s) {
    std::cout << s.size() << "\n" << s;
}

void write_ids(const std::vector<int32_t> & ids) {
    for (size_t i = 0; i < ids.size(); ++i) {
        std::cout << (i ? " " : "") << ids[i];
    }
    std::cout << "\n";
}

minicpm::Tokenizer load(const std::string & path) {
    gguf_init_params params = { /*no_alloc =*/true, /*ctx =*/nullptr };
    gguf_context *   ctx    = gguf_init_from_file(path.c_str(), params);
    if (ctx == nullptr) {
        throw minicpm::Error(minicpm::ErrorKind::File, "cannot read GGUF file " + path);
    }
    try {
        minicpm::Tokenizer tok = minicpm::Tokenizer::from_gguf(ctx, path);
        gguf_free(ctx);
        return tok;
    } catch (...) {
        gguf_free(ctx);
        throw;
    }
}

int stream_check(const minicpm::Tokenizer & tok) {
    int         passed = 0, failed = 0;
    std::string text;
    while (read_record(std::cin, text)) {
        const std::vector<int32_t> ids = tok.encode(text);
        for (bool skip : { false, true }) {
            const std::string     full = tok.decode(ids, skip);
            minicpm::StreamDecoder sd(tok, skip);
            std::string           acc;
            for (int32_t id : ids) {
                acc += sd.push(id);
            }
            acc += sd.flush();
            // The same with single bytes, cutting every multi-byte character.
            minicpm::StreamDecoder sd2(tok, skip);
            std::string           acc2;
            for (int32_t id : ids) {
                std::string piece = sd2.push(id);
                if (piece.size() != minicpm::unicode::sanitize_utf8(piece).size()) {
                    acc2 += "<invalid piece>";
                }
                acc2 += piece;
            }
            acc2 += sd2.flush();
            if (acc == full && acc2 == full) {
                ++passed;
            } else {
                ++failed;
                std::cerr << "stream mismatch for text of " << text.size() << " bytes\n";
            }
        }
    }
    std::cout << passed << " passed, " << failed << " failed\n";
    return failed == 0 ? 0 : 1;
}

} // namespace

int main(int argc, char ** argv) {
    if (argc < 3) {
        std::fprintf(stderr, "usage: %s MODEL.gguf|- encode|decode|stream-check|bench|nfc [flags]\n", argv[0]);
        return 2;
    }
    const std::string path = argv[1];
    const std::string mode = argv[2];
    const bool        flag = argc > 3;
    try {
        std::ios::sync_with_stdio(false);
        if (mode == "nfc") {
            std::string text;
            while (read_record(std::cin, text)) {
                write_record(minicpm::unicode::nfc(text));
            }
            return 0;
        }
        const minicpm::Tokenizer tok = load(path);
        if (mode == "encode") {
            std::string text;
            while (read_record(std::cin, text)) {
                write_ids(tok.encode(text, /*parse_special =*/!flag));
            }
        } else if (mode == "decode") {
            std::string line;
            while (std::getline(std::cin, line)) {
                std::istringstream   ss(line);
                std::vector<int32_t> ids;
                int32_t              id;
                while (ss >> id) {
                    ids.push_back(id);
                }
                write_record(tok.decode(ids, /*skip_special =*/flag));
            }
        } else if (mode == "stream-check") {
            return stream_check(tok);
        } else if (mode == "bench") {
            std::string text;
            read_record(std::cin, text);
            size_t     n_ids = 0;
            const auto t0    = std::chrono::steady_clock::now();
            const int  reps  = 10;
            for (int r = 0; r < reps; ++r) {
                n_ids = tok.encode(text).size();
            }
            const auto   t1 = std::chrono::steady_clock::now();
            const double ms = std::chrono::duration<double, std::milli>(t1 - t0).count() / reps;
            std::printf("%zu bytes -> %zu tokens in %.2f ms\n", text.size(), n_ids, ms);
        } else {
            std::fprintf(stderr, "unknown mode %s\n", mode.c_str());
            return 2;
        }
    } catch (const minicpm::Error & e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
    return 0;
}
