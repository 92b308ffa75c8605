// UTF-8 helpers shared by the tokenizer: validation, lossy conversion with U+FFFD, and the GPT-2
// byte-level alphabet (each byte shown as one printable code point, as in tokenizer vocabularies).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace pdserve::utf8 {

// Offset of the first byte that does not start a well-formed UTF-8 sequence (overlongs,
// surrogates and code points above U+10FFFF are ill-formed, as is a sequence cut off by the end
// of the text); nullopt when the whole text is valid.
std::optional<size_t> FindInvalid(std::string_view text);

// Length in bytes of the UTF-8 sequence whose first byte is `lead` (1 for bytes that cannot
// start one, so that a scan always advances).
size_t SequenceLength(uint8_t lead);

// Appends `bytes` to `out` as valid UTF-8, replacing each maximal ill-formed subpart by U+FFFD
// (the Unicode "substitution of maximal subparts" practice, as Rust's from_utf8_lossy and so
// Hugging Face's decoders do). With `final` false, a trailing sequence that is incomplete but
// could still become valid is left unconsumed. Returns the number of bytes of `bytes` consumed.
size_t AppendLossy(std::string_view bytes, bool final, std::string* out);

// Appends the UTF-8 encoding of code point `cp` (which must be a valid scalar value).
void AppendCodePoint(char32_t cp, std::string* out);

// The GPT-2 byte-level alphabet: byte b is written as code point ByteToCodePoint()[b] in
// byte-level vocabularies (printable bytes stand for themselves; the rest map to U+0100 and up,
// e.g. the space to 'Ġ' U+0120).
const std::array<char32_t, 256>& ByteToCodePoint();

// Decodes a byte-level token string back to raw bytes; nullopt when it contains a code point
// outside the alphabet or is not valid UTF-8.
std::optional<std::string> DecodeByteLevel(std::string_view token);

// Encodes raw bytes as a byte-level token string (the inverse of DecodeByteLevel).
std::string EncodeByteLevel(std::string_view bytes);

}  // namespace pdserve::utf8
