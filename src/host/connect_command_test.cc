#include "host/connect_command.h"

#include <gtest/gtest.h>

#include <string>

namespace vsockd::host {
namespace {

using State = ConnectCommandReader::State;

TEST(ParseConnectLineTest, AcceptsTheCanonicalForm) {
  auto port = ParseConnectLine("CONNECT 52");
  ASSERT_TRUE(port.ok()) << port.error().ToString();
  EXPECT_EQ(*port, 52u);
}

TEST(ParseConnectLineTest, KeywordIsCaseInsensitive) {
  for (const char* line : {"connect 1", "Connect 1", "cOnNeCt 1"}) {
    auto port = ParseConnectLine(line);
    ASSERT_TRUE(port.ok()) << line;
    EXPECT_EQ(*port, 1u);
  }
}

TEST(ParseConnectLineTest, FullPortRangeAndBlanks) {
  EXPECT_EQ(*ParseConnectLine("CONNECT 0"), 0u);
  EXPECT_EQ(*ParseConnectLine("CONNECT 4294967295"), 4294967295u);
  EXPECT_EQ(*ParseConnectLine("  CONNECT\t\t1024  "), 1024u);
  EXPECT_EQ(*ParseConnectLine("CONNECT 007"), 7u);
}

TEST(ParseConnectLineTest, ToleratesTrailingCarriageReturn) {
  auto port = ParseConnectLine("CONNECT 80\r");
  ASSERT_TRUE(port.ok());
  EXPECT_EQ(*port, 80u);
}

TEST(ParseConnectLineTest, RejectsMalformedLines) {
  for (const char* line :
       {"", "   ", "CONNECT", "CONNECT ", "CONNEC 5", "CONNECTX 5", "LISTEN 5", "CONNECT 5 6",
        "CONNECT -5", "CONNECT +5", "CONNECT 0x10", "CONNECT 5a", "CONNECT 4294967296",
        "CONNECT 99999999999999999999999", "CONNECT 5\r\r", "CONNECT\r", "5"}) {
    auto port = ParseConnectLine(line);
    EXPECT_FALSE(port.ok()) << "'" << line << "' parsed as " << (port.ok() ? *port : 0);
  }
  // A NUL byte is junk too.
  EXPECT_FALSE(ParseConnectLine(std::string_view("CONNECT 5\0", 10)).ok());
}

TEST(ParseConnectLineTest, ErrorsNeverSayOk) {
  for (const char* line : {"", "x", "CONNECT", "CONNECT x", "CONNECT 4294967296", "OK 5"}) {
    auto port = ParseConnectLine(line);
    ASSERT_FALSE(port.ok());
    EXPECT_FALSE(ContainsOk(port.error().context)) << port.error().context;
    EXPECT_FALSE(ContainsOk(MakeErrLine(port.error().context)));
  }
}

TEST(ConnectCommandReaderTest, WholeLineInOneRead) {
  ConnectCommandReader reader;
  EXPECT_EQ(reader.Append("CONNECT 1234\n"), State::kComplete);
  EXPECT_EQ(reader.port(), 1234u);
  EXPECT_EQ(reader.prefix(), "");
}

TEST(ConnectCommandReaderTest, LineSplitIntoSingleBytes) {
  ConnectCommandReader reader;
  std::string line = "connect 77\r\n";
  for (size_t i = 0; i + 1 < line.size(); ++i) {
    EXPECT_EQ(reader.Append(line.substr(i, 1)), State::kNeedMore) << i;
  }
  EXPECT_EQ(reader.Append("\n"), State::kComplete);
  EXPECT_EQ(reader.port(), 77u);
}

TEST(ConnectCommandReaderTest, KeepsPayloadAfterTheNewline) {
  ConnectCommandReader reader;
  EXPECT_EQ(reader.Append("CONN"), State::kNeedMore);
  EXPECT_EQ(reader.Append("ECT 9\nhello"), State::kComplete);
  EXPECT_EQ(reader.port(), 9u);
  EXPECT_EQ(reader.prefix(), "hello");
  // Bytes fed after completion extend the prefix.
  EXPECT_EQ(reader.Append(" world\n"), State::kComplete);
  EXPECT_EQ(reader.TakePrefix(), "hello world\n");
}

TEST(ConnectCommandReaderTest, PayloadMayContainNewlinesAndBinary) {
  ConnectCommandReader reader;
  std::string input("CONNECT 3\n\0\n\xff", 13);
  EXPECT_EQ(reader.Append(input), State::kComplete);
  EXPECT_EQ(reader.prefix(), std::string("\0\n\xff", 3));
}

TEST(ConnectCommandReaderTest, BadPortIsAnError) {
  ConnectCommandReader reader;
  EXPECT_EQ(reader.Append("CONNECT 12x\n"), State::kError);
  EXPECT_FALSE(reader.error().empty());
  EXPECT_FALSE(ContainsOk(reader.error()));
  // Later bytes are ignored.
  EXPECT_EQ(reader.Append("CONNECT 1\n"), State::kError);
}

TEST(ConnectCommandReaderTest, OverlongLineWithoutNewlineFailsAtTheCap) {
  ConnectCommandReader reader(16);
  EXPECT_EQ(reader.Append("CONNECT 00000000"), State::kNeedMore);  // exactly 16
  EXPECT_EQ(reader.Append("0"), State::kError);
  EXPECT_EQ(reader.error(), "command line too long");
  EXPECT_EQ(reader.buffered(), 0u);
}

TEST(ConnectCommandReaderTest, OverlongLineWithNewlineIsAnError) {
  ConnectCommandReader reader(16);
  EXPECT_EQ(reader.Append("CONNECT 000000001\n"), State::kError);  // 17 before '\n'
  ConnectCommandReader at_cap(16);
  EXPECT_EQ(at_cap.Append("CONNECT 00000001\n"), State::kComplete);  // 16 before '\n'
  EXPECT_EQ(at_cap.port(), 1u);
}

TEST(ConnectCommandReaderTest, DefaultCapIs64Bytes) {
  ConnectCommandReader reader;
  EXPECT_EQ(reader.Append(std::string(64, ' ')), State::kNeedMore);
  EXPECT_EQ(reader.Append(" "), State::kError);
}

TEST(ConnectCommandReaderTest, MissingNewlineNeedsMore) {
  ConnectCommandReader reader;
  EXPECT_EQ(reader.Append("CONNECT 5"), State::kNeedMore);
  EXPECT_EQ(reader.state(), State::kNeedMore);
  EXPECT_EQ(reader.buffered(), 9u);
}

TEST(MakeErrLineTest, OneLineAndNeverOk) {
  EXPECT_EQ(MakeErrLine("connection refused by guest port 5"),
            "ERR connection refused by guest port 5\n");
  for (const char* reason : {"took too long", "OK", "ok", "BROKEN pipe", "tOkEn", "a\nOK 5"}) {
    std::string line = MakeErrLine(reason);
    EXPECT_FALSE(ContainsOk(line)) << line;
    EXPECT_EQ(line.rfind("ERR ", 0), 0u);
    EXPECT_EQ(line.find('\n'), line.size() - 1) << line;
  }
}

TEST(ContainsOkTest, FindsAnyCase) {
  EXPECT_TRUE(ContainsOk("OK 5"));
  EXPECT_TRUE(ContainsOk("took"));
  EXPECT_TRUE(ContainsOk("TOKEN"));
  EXPECT_TRUE(ContainsOk("oK"));
  EXPECT_FALSE(ContainsOk("refused"));
  EXPECT_FALSE(ContainsOk("o k"));
  EXPECT_FALSE(ContainsOk(""));
}

}  // namespace
}  // namespace vsockd::host
