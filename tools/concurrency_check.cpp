// Several sessions on one model, one per thread, against the same work done one by one: the
// logits after every prompt must be equal bit for bit, the generated text identical. Meant to
// run under ThreadSanitizer (configure with -DMINICPM_SANITIZE=thread -DMINICPM_BUILD_EXAMPLES=ON):
//
//   minicpm-concurrency-check MODEL.gguf [--mmproj FILE] [--sessions 8] [--rounds 3] [--device cpu]
//
// Exit status 0 when every concurrent round equals the serial run, 1 otherwise.
#include "minicpm/minicpm.h"

#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace {

struct Result {
    std::vector<std::vector<float>> logits;   // after each turn's prompt
    std::vector<std::string>        texts;
};

std::shared_ptr<minicpm::RgbImage> random_image(int w, int h, unsigned seed) {
    auto img = std::make_shared<minicpm::RgbImage>();
    img->width = w;
    img->height = h;
    img->pixels.resize((size_t) w * h * 3);
    std::mt19937 rng(seed);
    for (auto & p : img->pixels) p = (uint8_t) (rng() & 255);
    return img;
}

// Job k: text only, one image or two images, two turns, greedy.
Result run(const std::shared_ptr<minicpm::Model> & model, int k) {
    minicpm::SessionParams sp;
    sp.n_ctx = 2048;
    sp.n_threads = 1;
    minicpm::Session s(model, sp);
    minicpm::Message user = minicpm::Message::user("Tell me about " + std::to_string(k) + ".");
    if (model->has_vision() && k % 3 != 0) {
        user.content.insert(user.content.begin(), minicpm::ContentPart::make_image(random_image(200 + 40 * k, 180, k)));
        if (k % 3 == 2) user.content.insert(user.content.begin(), minicpm::ContentPart::make_image(random_image(448, 448, 99 + k)));
    }
    std::vector<minicpm::Message> msgs = {user};
    minicpm::ChatParams cp;
    cp.generation.max_tokens = 6;
    cp.generation.sampling.temperature = 0.0f;
    Result r;
    for (int turn = 0; turn < 2; ++turn) {
        const std::string answer = s.chat(msgs, cp);
        s.sync(s.chat_prompt(msgs, cp).segments);
        r.logits.push_back(s.logits());
        r.texts.push_back(answer);
        msgs.push_back(minicpm::Message::assistant(answer));
        msgs.push_back(minicpm::Message::user("And then?"));
    }
    return r;
}

bool same(const Result & a, const Result & b) {
    if (a.texts != b.texts || a.logits.size() != b.logits.size()) return false;
    for (size_t i = 0; i < a.logits.size(); ++i) {
        if (a.logits[i].size() != b.logits[i].size() ||
            std::memcmp(a.logits[i].data(), b.logits[i].data(), a.logits[i].size() * sizeof(float)) != 0) {
            return false;
        }
    }
    return true;
}

} // namespace

int main(int argc, char ** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: %s MODEL.gguf [--mmproj FILE] [--sessions N] [--rounds N] [--device D]\n", argv[0]);
        return 2;
    }
    minicpm::ModelParams mp;
    mp.device = "cpu";
    mp.n_threads = 1;
    int n_sessions = 8, rounds = 3;
    for (int i = 2; i + 1 < argc; i += 2) {
        const std::string a = argv[i];
        if (a == "--mmproj") mp.mmproj = argv[i + 1];
        else if (a == "--sessions") n_sessions = std::atoi(argv[i + 1]);
        else if (a == "--rounds") rounds = std::atoi(argv[i + 1]);
        else if (a == "--device") mp.device = argv[i + 1];
    }
    try {
        auto model = minicpm::Model::load(argv[1], mp);
        std::vector<Result> serial;
        for (int k = 0; k < n_sessions; ++k) serial.push_back(run(model, k));
        int bad = 0;
        for (int round = 0; round < rounds; ++round) {
            std::vector<Result> got(n_sessions);
            std::vector<std::thread> threads;
            for (int k = 0; k < n_sessions; ++k) threads.emplace_back([&, k] { got[k] = run(model, k); });
            for (auto & t : threads) t.join();
            for (int k = 0; k < n_sessions; ++k) {
                if (!same(got[k], serial[k])) {
                    std::fprintf(stderr, "round %d: session %d differs from the serial run\n", round, k);
                    ++bad;
                }
            }
        }
        std::printf("%d sessions x %d rounds: %s\n", n_sessions, rounds, bad ? "MISMATCH" : "all equal to the serial runs");
        return bad ? 1 : 0;
    } catch (const minicpm::Error & e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
}
