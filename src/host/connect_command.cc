#include "host/connect_command.h"

#include <cerrno>

namespace vsockd::host {
namespace {

bool IsBlank(char c) { return c == ' ' || c == '\t'; }

char Lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (Lower(a[i]) != Lower(b[i])) return false;
  }
  return true;
}

// Splits on blanks; returns false if there are more than `max` tokens.
bool Tokenize(std::string_view line, std::string_view* tokens, size_t max, size_t* count) {
  *count = 0;
  size_t i = 0;
  while (i < line.size()) {
    while (i < line.size() && IsBlank(line[i])) ++i;
    if (i == line.size()) break;
    size_t start = i;
    while (i < line.size() && !IsBlank(line[i])) ++i;
    if (*count == max) return false;
    tokens[(*count)++] = line.substr(start, i - start);
  }
  return true;
}

}  // namespace

Result<uint32_t> ParseConnectLine(std::string_view line) {
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  std::string_view tokens[2];
  size_t count = 0;
  if (!Tokenize(line, tokens, 2, &count) || count == 0 || !EqualsIgnoreCase(tokens[0], "connect")) {
    return MakeError(EINVAL, "malformed command, expected 'CONNECT <port>'");
  }
  if (count < 2) return MakeError(EINVAL, "missing port, expected 'CONNECT <port>'");
  std::string_view digits = tokens[1];
  uint64_t value = 0;
  for (char c : digits) {
    if (c < '0' || c > '9') {
      return MakeError(EINVAL, "invalid port, expected a decimal number 0..4294967295");
    }
    value = value * 10 + static_cast<uint64_t>(c - '0');
    if (value > UINT32_MAX) {
      return MakeError(ERANGE, "port out of range, expected 0..4294967295");
    }
  }
  return static_cast<uint32_t>(value);
}

ConnectCommandReader::State ConnectCommandReader::Append(std::string_view bytes) {
  switch (state_) {
    case State::kError:
      return state_;
    case State::kComplete:
      prefix_.append(bytes);
      return state_;
    case State::kNeedMore:
      break;
  }
  size_t nl = bytes.find('\n');
  if (nl == std::string_view::npos) {
    if (line_.size() + bytes.size() > max_line_) {
      state_ = State::kError;
      error_ = "command line too long";
      line_.clear();
      return state_;
    }
    line_.append(bytes);
    return state_;
  }
  if (line_.size() + nl > max_line_) {
    state_ = State::kError;
    error_ = "command line too long";
    line_.clear();
    return state_;
  }
  line_.append(bytes.substr(0, nl));
  auto port = ParseConnectLine(line_);
  line_.clear();
  if (!port.ok()) {
    state_ = State::kError;
    error_ = port.error().context;
    return state_;
  }
  port_ = *port;
  prefix_.assign(bytes.substr(nl + 1));
  state_ = State::kComplete;
  return state_;
}

bool ContainsOk(std::string_view text) {
  for (size_t i = 0; i + 1 < text.size(); ++i) {
    if (Lower(text[i]) == 'o' && Lower(text[i + 1]) == 'k') return true;
  }
  return false;
}

std::string MakeErrLine(std::string_view reason) {
  std::string line = "ERR ";
  line.append(reason);
  // Defuse "ok" in any case: replace the 'k' so the word stays readable ("bro_en").
  for (size_t i = 0; i + 1 < line.size(); ++i) {
    if (Lower(line[i]) == 'o' && Lower(line[i + 1]) == 'k') line[i + 1] = '_';
  }
  for (char& c : line) {
    if (c == '\n' || c == '\r') c = ' ';  // one line, whatever the reason held
  }
  line.push_back('\n');
  return line;
}

}  // namespace vsockd::host
