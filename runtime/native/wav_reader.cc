// 16-bit mono PCM WAV files read straight into a caller's buffer, many files per call, on threads and without the
// Python interpreter: reading one file through Python costs ~0.1 ms of interpreter time, which the thread that
// queues GPU work then waits for. Anything else (other formats, other sample types, channels or rates, an odd or
// truncated layout) is reported as not handled, and the caller reads it with libsndfile instead.
// The samples are stored as read: this assumes a little-endian host (x86-64, AArch64), as WAV is.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>

namespace {

uint32_t U32(const unsigned char* p) { return p[0] | (p[1] << 8) | (p[2] << 16) | (uint32_t(p[3]) << 24); }
uint16_t U16(const unsigned char* p) { return uint16_t(p[0] | (p[1] << 8)); }

// The data chunk of a plain 16-bit mono PCM WAV at `rate`: its byte offset and sample count, or false.
bool Layout(const char* path, int32_t rate, int64_t* offset, int64_t* samples) {
  FILE* f = std::fopen(path, "rb");
  if (f == nullptr) return false;
  bool found = false;
  unsigned char header[12];
  if (std::fread(header, 1, 12, f) == 12 && std::memcmp(header, "RIFF", 4) == 0 &&
      std::memcmp(header + 8, "WAVE", 4) == 0 && std::fseek(f, 0, SEEK_END) == 0) {
    const int64_t file_size = std::ftell(f);
    int64_t at = 12;
    bool format_ok = false;
    unsigned char chunk[8], fmt[40];
    while (at + 8 <= file_size && std::fseek(f, at, SEEK_SET) == 0 && std::fread(chunk, 1, 8, f) == 8) {
      const int64_t size = U32(chunk + 4);
      if (std::memcmp(chunk, "fmt ", 4) == 0) {
        if (size < 16 || size > 40 || std::fread(fmt, 1, size, f) != static_cast<size_t>(size)) break;
        uint16_t format = U16(fmt);
        if (format == 0xFFFE && size >= 26) format = U16(fmt + 24);  // WAVE_FORMAT_EXTENSIBLE: its subformat
        format_ok = format == 1 && U16(fmt + 2) == 1 && static_cast<int32_t>(U32(fmt + 4)) == rate &&
                    U16(fmt + 12) == 2 && U16(fmt + 14) == 16;
      } else if (std::memcmp(chunk, "data", 4) == 0) {
        // the whole chunk must be in the file (a streamed header's placeholder size is not): else libsndfile decides
        found = format_ok && size % 2 == 0 && at + 8 + size <= file_size;
        *offset = at + 8;
        *samples = size / 2;
        break;
      }
      at += 8 + size + (size & 1);
    }
  }
  std::fclose(f);
  return found;
}

template <typename Fn>
void Parallel(int64_t n, int32_t threads, Fn fn) {
  std::atomic<int64_t> next{0};
  auto work = [&] {
    for (int64_t i = next++; i < n; i = next++) fn(i);
  };
  std::vector<std::thread> pool;
  for (int32_t t = 1; t < std::min<int64_t>(threads, n); ++t) pool.emplace_back(work);
  work();
  for (auto& t : pool) t.join();
}

}  // namespace

extern "C" {

// Per file: the data chunk's byte offset and sample count, or samples = -1 where the file is not handled here.
void wav_pcm16_layout(const char* const* paths, int64_t n, int32_t rate, int32_t threads, int64_t* offsets,
                      int64_t* samples) {
  Parallel(n, threads, [&](int64_t i) {
    if (!Layout(paths[i], rate, &offsets[i], &samples[i])) samples[i] = -1;
  });
}

// Reads counts[i] samples of file i from byte offsets[i] into out + positions[i]; ok[i] = 1 where all were read.
void wav_pcm16_read(const char* const* paths, const int64_t* offsets, const int64_t* counts,
                    const int64_t* positions, int64_t n, int32_t threads, int16_t* out, int32_t* ok) {
  Parallel(n, threads, [&](int64_t i) {
    ok[i] = 0;
    FILE* f = std::fopen(paths[i], "rb");
    if (f == nullptr) return;
    if (std::fseek(f, offsets[i], SEEK_SET) == 0 &&
        std::fread(out + positions[i], 2, counts[i], f) == static_cast<size_t>(counts[i])) {
      ok[i] = 1;
    }
    std::fclose(f);
  });
}
}
