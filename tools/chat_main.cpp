// Development driver for the chat template renderer, outside the library build:
//   g++ -std=c++17 -O2 -I csrc/include -I csrc csrc/runtime/chat.cpp tools/chat_main.cpp -o /tmp/chat_main
//   /tmp/chat_main TEMPLATE_FILE < conversation
// TEMPLATE_FILE may be "-" for an empty template source. The conversation is read from stdin
// in a length-prefixed form, so that any bytes can appear in the contents:
//   <message count> <add_generation_prompt 0|1> <enable_thinking u|0|1>\n
//   then per message: <role> <content bytes> <reasoning bytes, -1 for none>\n<content><reasoning>
// Prints the family on the first line, then the rendered prompt. On an error, prints the
// message to stderr and exits with status 2.
#include "core/error.h"
#include "minicpm/chat.h"

#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

namespace {

std::string read_bytes(std::istream & in, long long count) {
    std::string s(static_cast<size_t>(count), '\0');
    if (count > 0 && !in.read(&s[0], count)) {
        throw std::runtime_error("truncated input");
    }
    return s;
}

std::string read_line(std::istream & in) {
    std::string line;
    if (!std::getline(in, line)) {
        throw std::runtime_error("truncated input");
    }
    return line;
}

}  // namespace

int main(int argc, char ** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s TEMPLATE_FILE|- < conversation\n", argv[0]);
        return 1;
    }
    try {
        std::string source;
        if (std::string(argv[1]) != "-") {
            std::ifstream f(argv[1], std::ios::binary);
            if (!f) {
                std::fprintf(stderr, "cannot open %s\n", argv[1]);
                return 1;
            }
            source.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
        }
        std::istringstream head(read_line(std::cin));
        size_t             count = 0;
        int                add_gen = 1;
        std::string        think;
        head >> count >> add_gen >> think;

        minicpm::ChatOptions opts;
        opts.add_generation_prompt = add_gen != 0;
        if (think == "0" || think == "1") {
            opts.enable_thinking = think == "1";
        }

        std::vector<minicpm::ChatMessage> messages;
        for (size_t i = 0; i < count; ++i) {
            std::istringstream  mh(read_line(std::cin));
            minicpm::ChatMessage m;
            long long            clen = 0;
            long long            rlen = -1;
            mh >> m.role >> clen >> rlen;
            m.content = read_bytes(std::cin, clen);
            if (rlen >= 0) {
                m.reasoning_content = read_bytes(std::cin, rlen);
            }
            messages.push_back(std::move(m));
        }

        const minicpm::ChatTemplate tmpl = minicpm::ChatTemplate::from_source(source);
        const std::string           text = tmpl.render(messages, opts);
        std::cout << tmpl.family() << '\n' << text;
        std::cout.flush();
    } catch (const minicpm::Error & e) {
        std::fprintf(stderr, "%s\n", e.what());
        return 2;
    } catch (const std::exception & e) {
        std::fprintf(stderr, "driver: %s\n", e.what());
        return 1;
    }
    return 0;
}
