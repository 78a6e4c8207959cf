#include "agent/tokens/redact.h"

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/agent/tokens/kubelet_fixture.h"

namespace tokenwatch::tokens {
namespace {

using fixture::MakeFakeJwt;
using ::testing::ElementsAre;
using ::testing::IsEmpty;

TEST(RedactJwts, RedactsBearerHeader) {
  std::string jwt = MakeFakeJwt();
  std::vector<std::string> digests;
  std::string out = RedactJwts(
      absl::StrCat("curl -H 'Authorization: Bearer ", jwt, "' https://10.96.0.1/api"), &digests);
  EXPECT_EQ(out, "curl -H 'Authorization: Bearer <redacted-jwt>' https://10.96.0.1/api");
  EXPECT_THAT(digests, ElementsAre(TokenDigest(jwt)));
}

TEST(RedactJwts, RedactsTokenFlag) {
  std::string jwt = MakeFakeJwt();
  EXPECT_EQ(RedactJwts(absl::StrCat("kubectl --token=", jwt, " get secrets -A")),
            "kubectl --token=<redacted-jwt> get secrets -A");
}

TEST(RedactJwts, RedactsSeveralInOneString) {
  std::string a = MakeFakeJwt();
  std::string b = MakeFakeJwt();
  std::vector<std::string> digests;
  std::string out =
      RedactJwts(absl::StrCat(a, " ", R"({"token":")", b, R"("} and again:)", a), &digests);
  EXPECT_EQ(out, R"(<redacted-jwt> {"token":"<redacted-jwt>"} and again:<redacted-jwt>)");
  EXPECT_THAT(digests, ElementsAre(TokenDigest(a), TokenDigest(b), TokenDigest(a)));
  EXPECT_NE(TokenDigest(a), TokenDigest(b));
}

TEST(RedactJwts, RedactsJwtGluedToOtherText) {
  std::string jwt = MakeFakeJwt();
  std::string out = RedactJwts(absl::StrCat("token:", jwt, "\n"));
  EXPECT_EQ(out, "token:<redacted-jwt>\n");
  EXPECT_EQ(out.find(jwt.substr(0, 20)), std::string::npos);
}

TEST(RedactJwts, LeavesTextWithoutJwtsUntouched) {
  for (absl::string_view text :
       {"", "cat /var/run/secrets/kubernetes.io/serviceaccount/token", "eyJ", "eyJhbGciOi",
        "eyJabc.def.ghi", "v1.2.3", "a.b.c", "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0",
        "eyJhbGciOiJSUzI1NiJ9..c2lnbmF0dXJlLXRoYXQtaXMtbG9uZw", "image@sha256:abcdef",
        "dGhpcyBpcyBqdXN0IGJhc2U2NA=="}) {
    std::vector<std::string> digests;
    EXPECT_EQ(RedactJwts(text, &digests), text);
    EXPECT_THAT(digests, IsEmpty()) << text;
    EXPECT_FALSE(ContainsJwt(text)) << text;
  }
}

TEST(RedactJwts, ContainsJwtAgreesWithRedaction) {
  EXPECT_TRUE(ContainsJwt(absl::StrCat("x ", MakeFakeJwt())));
}

TEST(TokenDigest, IsLowerCaseSha256Hex) {
  // FIPS 180-2 test vector.
  EXPECT_EQ(TokenDigest("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(TokenDigest(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

}  // namespace
}  // namespace tokenwatch::tokens
