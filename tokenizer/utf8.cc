#include "tokenizer/utf8.h"

namespace pdserve::utf8 {
namespace {

constexpr char kReplacement[] = "\xEF\xBF\xBD";  // U+FFFD

// The accepted range of the second byte for each lead byte (Unicode Table 3-7); the remaining
// continuation bytes are always 0x80..0xBF. Returns false for bytes that cannot lead.
bool LeadInfo(uint8_t lead, size_t* length, uint8_t* lo, uint8_t* hi) {
  *lo = 0x80;
  *hi = 0xBF;
  if (lead < 0x80) {
    *length = 1;
  } else if (lead >= 0xC2 && lead <= 0xDF) {
    *length = 2;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    *length = 3;
    if (lead == 0xE0) *lo = 0xA0;  // no overlongs
    if (lead == 0xED) *hi = 0x9F;  // no surrogates
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    *length = 4;
    if (lead == 0xF0) *lo = 0x90;  // no overlongs
    if (lead == 0xF4) *hi = 0x8F;  // nothing above U+10FFFF
  } else {
    return false;
  }
  return true;
}

// Scans one sequence at `bytes[pos]`. Returns the number of bytes forming a valid sequence, or 0
// with *subpart set to the length of the maximal ill-formed subpart; *truncated tells whether
// the subpart ended only because the input did.
size_t ScanSequence(std::string_view bytes, size_t pos, size_t* subpart, bool* truncated) {
  size_t length;
  uint8_t lo, hi;
  *truncated = false;
  const auto lead = static_cast<uint8_t>(bytes[pos]);
  if (!LeadInfo(lead, &length, &lo, &hi)) {
    *subpart = 1;
    return 0;
  }
  for (size_t i = 1; i < length; ++i) {
    if (pos + i >= bytes.size()) {
      *subpart = i;
      *truncated = true;
      return 0;
    }
    const auto b = static_cast<uint8_t>(bytes[pos + i]);
    const uint8_t min = i == 1 ? lo : 0x80;
    const uint8_t max = i == 1 ? hi : 0xBF;
    if (b < min || b > max) {
      *subpart = i;
      return 0;
    }
  }
  return length;
}

std::array<char32_t, 256> MakeByteToCodePoint() {
  std::array<char32_t, 256> table{};
  char32_t next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
    table[b] = printable ? static_cast<char32_t>(b) : next++;
  }
  return table;
}

// Code point → byte for the byte-level alphabet (code points are all below 0x144).
std::array<int16_t, 512> MakeCodePointToByte() {
  std::array<int16_t, 512> inverse;
  inverse.fill(-1);
  const auto& table = ByteToCodePoint();
  for (int b = 0; b < 256; ++b) inverse[table[b]] = static_cast<int16_t>(b);
  return inverse;
}

}  // namespace

size_t SequenceLength(uint8_t lead) {
  size_t length;
  uint8_t lo, hi;
  return LeadInfo(lead, &length, &lo, &hi) ? length : 1;
}

std::optional<size_t> FindInvalid(std::string_view text) {
  size_t pos = 0;
  while (pos < text.size()) {
    if (static_cast<uint8_t>(text[pos]) < 0x80) {
      ++pos;
      continue;
    }
    size_t subpart;
    bool truncated;
    const size_t n = ScanSequence(text, pos, &subpart, &truncated);
    if (n == 0) return pos;
    pos += n;
  }
  return std::nullopt;
}

size_t AppendLossy(std::string_view bytes, bool final, std::string* out) {
  size_t pos = 0;
  while (pos < bytes.size()) {
    size_t subpart;
    bool truncated;
    const size_t n = ScanSequence(bytes, pos, &subpart, &truncated);
    if (n > 0) {
      out->append(bytes.substr(pos, n));
      pos += n;
      continue;
    }
    if (truncated && !final) return pos;  // may still complete
    out->append(kReplacement);
    pos += subpart;
  }
  return pos;
}

void AppendCodePoint(char32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

const std::array<char32_t, 256>& ByteToCodePoint() {
  static const std::array<char32_t, 256> table = MakeByteToCodePoint();
  return table;
}

std::optional<std::string> DecodeByteLevel(std::string_view token) {
  static const std::array<int16_t, 512> inverse = MakeCodePointToByte();
  std::string out;
  out.reserve(token.size());
  size_t pos = 0;
  while (pos < token.size()) {
    const auto lead = static_cast<uint8_t>(token[pos]);
    size_t subpart;
    bool truncated;
    const size_t n = ScanSequence(token, pos, &subpart, &truncated);
    if (n == 0) return std::nullopt;
    char32_t cp = n == 1 ? lead : lead & (0xFF >> (n + 1));
    for (size_t i = 1; i < n; ++i) cp = (cp << 6) | (static_cast<uint8_t>(token[pos + i]) & 0x3F);
    if (cp >= inverse.size() || inverse[cp] < 0) return std::nullopt;
    out.push_back(static_cast<char>(inverse[cp]));
    pos += n;
  }
  return out;
}

std::string EncodeByteLevel(std::string_view bytes) {
  const auto& table = ByteToCodePoint();
  std::string out;
  out.reserve(bytes.size() * 2);
  for (char c : bytes) AppendCodePoint(table[static_cast<uint8_t>(c)], &out);
  return out;
}

}  // namespace pdserve::utf8
