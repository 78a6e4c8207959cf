#include "agent/tokens/claims.h"

#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/agent/tokens/kubelet_fixture.h"

namespace tokenwatch::tokens {
namespace {

using fixture::FakeJwtOptions;
using fixture::MakeFakeJwt;
using ::testing::ElementsAre;
using ::testing::IsEmpty;

std::string Seg(absl::string_view s) { return absl::WebSafeBase64Escape(s); }

std::string JwtWithPayload(absl::string_view payload_json) {
  return absl::StrCat(Seg(R"({"alg":"RS256","kid":"x"})"), ".", Seg(payload_json), ".",
                      Seg("not-a-real-signature-but-long-enough"));
}

TEST(ParseServiceAccountJwt, ParsesBoundPodToken) {
  FakeJwtOptions o;
  o.namespace_name = "payments";
  o.pod_name = "api-7d9f-abcde";
  o.pod_uid = "11111111-2222-3333-4444-555555555555";
  o.service_account = "api";
  o.expiry = absl::FromUnixSeconds(1767225600);
  absl::StatusOr<Claims> c = ParseServiceAccountJwt(MakeFakeJwt(o));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->issuer, "https://kubernetes.default.svc.cluster.local");
  EXPECT_EQ(c->namespace_name, "payments");
  EXPECT_EQ(c->pod_name, "api-7d9f-abcde");
  EXPECT_EQ(c->pod_uid, "11111111-2222-3333-4444-555555555555");
  EXPECT_EQ(c->service_account, "api");
  ASSERT_TRUE(c->expiry.has_value());
  EXPECT_EQ(*c->expiry, absl::FromUnixSeconds(1767225600));
  EXPECT_THAT(c->audiences, ElementsAre("https://kubernetes.default.svc.cluster.local"));
  EXPECT_FALSE(c->legacy);
}

TEST(ParseServiceAccountJwt, ParsesTokenNotBoundToPod) {
  FakeJwtOptions o;
  o.pod_uid = "";  // kubectl create token: bound to the service account only
  absl::StatusOr<Claims> c = ParseServiceAccountJwt(MakeFakeJwt(o));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->namespace_name, "default");
  EXPECT_EQ(c->service_account, "default");
  EXPECT_THAT(c->pod_name, IsEmpty());
  EXPECT_THAT(c->pod_uid, IsEmpty());
}

TEST(ParseServiceAccountJwt, ParsesLegacySecretToken) {
  FakeJwtOptions o;
  o.legacy = true;
  o.issuer = "kubernetes/serviceaccount";
  o.namespace_name = "kube-system";
  o.service_account = "builder";
  o.expiry.reset();
  o.audiences.clear();
  absl::StatusOr<Claims> c = ParseServiceAccountJwt(MakeFakeJwt(o));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->legacy);
  EXPECT_EQ(c->issuer, "kubernetes/serviceaccount");
  EXPECT_EQ(c->namespace_name, "kube-system");
  EXPECT_EQ(c->service_account, "builder");
  EXPECT_FALSE(c->expiry.has_value());
  EXPECT_THAT(c->audiences, IsEmpty());
  EXPECT_THAT(c->pod_uid, IsEmpty());
}

TEST(ParseServiceAccountJwt, ParsesAzureWorkloadIdentityToken) {
  FakeJwtOptions o;
  o.issuer = "https://oidc.prod-aks.azure.com/00000000-0000-0000-0000-000000000000/";
  o.audiences = {"api://AzureADTokenExchange"};
  absl::StatusOr<Claims> c = ParseServiceAccountJwt(MakeFakeJwt(o));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_THAT(c->audiences, ElementsAre("api://AzureADTokenExchange"));
  EXPECT_EQ(c->issuer, o.issuer);
  EXPECT_EQ(c->pod_name, "web-0");
}

TEST(ParseServiceAccountJwt, AcceptsAudienceAsString) {
  FakeJwtOptions o;
  o.audiences = {"sts.amazonaws.com"};
  o.audience_as_string = true;
  std::string jwt = MakeFakeJwt(o);
  // Make sure the fixture really wrote a string, so this test cannot pass by accident.
  std::string payload;
  ASSERT_TRUE(
      absl::WebSafeBase64Unescape(std::vector<std::string>(absl::StrSplit(jwt, '.'))[1], &payload));
  ASSERT_THAT(payload, ::testing::HasSubstr(R"("aud":"sts.amazonaws.com")"));
  absl::StatusOr<Claims> c = ParseServiceAccountJwt(jwt);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_THAT(c->audiences, ElementsAre("sts.amazonaws.com"));
}

TEST(ParseServiceAccountJwt, AcceptsAudienceAsArray) {
  FakeJwtOptions o;
  o.audiences = {"https://kubernetes.default.svc", "vault"};
  absl::StatusOr<Claims> c = ParseServiceAccountJwt(MakeFakeJwt(o));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_THAT(c->audiences, ElementsAre("https://kubernetes.default.svc", "vault"));
}

TEST(ParseServiceAccountJwt, AcceptsPaddedSegments) {
  std::string jwt = MakeFakeJwt();
  std::vector<std::string> parts = absl::StrSplit(jwt, '.');
  std::string payload;
  ASSERT_TRUE(absl::WebSafeBase64Unescape(parts[1], &payload));
  // Some issuers pad their segments; the web-safe alphabet stays.
  std::string p = absl::WebSafeBase64Escape(payload);
  while (p.size() % 4 != 0) p.push_back('=');
  ASSERT_NE(p.back(), parts[1].back());  // the fixture's payload needed padding
  EXPECT_TRUE(ParseServiceAccountJwt(absl::StrCat(parts[0], ".", p, ".", parts[2])).ok());
}

TEST(ParseServiceAccountJwt, RejectsWhatIsNotAJwt) {
  for (absl::string_view input : {"", "hello", "a.b", "a.b.c.d", "..", "eyJ.eyJ.",
                                  "-----BEGIN CERTIFICATE-----", "default"}) {
    EXPECT_FALSE(ParseServiceAccountJwt(input).ok()) << "input: " << input;
  }
}

TEST(ParseServiceAccountJwt, RejectsBadBase64) {
  std::string jwt = MakeFakeJwt();
  std::vector<std::string> parts = absl::StrSplit(jwt, '.');
  // '+' and '/' are the standard alphabet, not base64url; '*' is in neither.
  for (absl::string_view bad : {"eyJ+abc/def", "eyJ*abc", "e"}) {
    absl::StatusOr<Claims> c =
        ParseServiceAccountJwt(absl::StrCat(parts[0], ".", bad, ".", parts[2]));
    EXPECT_FALSE(c.ok()) << bad;
  }
}

TEST(ParseServiceAccountJwt, RejectsPayloadThatIsNotJson) {
  EXPECT_FALSE(ParseServiceAccountJwt(JwtWithPayload("not json at all")).ok());
  EXPECT_FALSE(ParseServiceAccountJwt(JwtWithPayload(R"(["an","array"])")).ok());
  EXPECT_FALSE(ParseServiceAccountJwt(JwtWithPayload(R"({"unterminated": )")).ok());
}

TEST(ParseServiceAccountJwt, RejectsJsonWithoutKubernetesClaims) {
  FakeJwtOptions o;
  o.kubernetes_claims = false;
  o.issuer = "https://accounts.example.com";
  absl::StatusOr<Claims> c = ParseServiceAccountJwt(MakeFakeJwt(o));
  EXPECT_FALSE(c.ok());
  EXPECT_THAT(c.status().message(), ::testing::HasSubstr("Kubernetes"));
  // Half the claims are not enough either.
  EXPECT_FALSE(
      ParseServiceAccountJwt(JwtWithPayload(R"({"kubernetes.io":{"namespace":"x"}})")).ok());
}

TEST(ParseServiceAccountJwt, RejectsHeaderWithoutAlg) {
  std::string jwt = MakeFakeJwt();
  std::vector<std::string> parts = absl::StrSplit(jwt, '.');
  EXPECT_FALSE(
      ParseServiceAccountJwt(absl::StrCat(Seg(R"({"typ":"JWT"})"), ".", parts[1], ".", parts[2]))
          .ok());
}

// An error message may be logged; it must not carry any part of what it rejected.
TEST(ParseServiceAccountJwt, ErrorMessagesNeverContainTheInput) {
  FakeJwtOptions no_k8s;
  no_k8s.kubernetes_claims = false;
  std::string good = MakeFakeJwt();
  std::vector<std::string> parts = absl::StrSplit(good, '.');
  std::vector<std::string> inputs = {
      MakeFakeJwt(no_k8s),
      absl::StrCat(parts[0], ".", parts[1]),
      absl::StrCat(parts[0], ".", parts[1], ".", parts[2], ".", parts[2]),
      absl::StrCat(parts[0], ".", parts[1], "*", ".", parts[2]),
      JwtWithPayload(R"({"secretvalue": unquoted_secret_word})"),
      JwtWithPayload("plain secret text here"),
      absl::StrCat(Seg(R"({"typ":"JWT","secretheader":"abc"})"), ".", parts[1], ".", parts[2]),
  };
  for (const std::string& input : inputs) {
    absl::StatusOr<Claims> c = ParseServiceAccountJwt(input);
    ASSERT_FALSE(c.ok());
    std::string message(c.status().message());
    ASSERT_FALSE(message.empty());
    for (size_t i = 0; i + 8 <= input.size(); ++i) {
      ASSERT_EQ(message.find(input.substr(i, 8)), std::string::npos)
          << "message quotes the input: " << message;
    }
    for (const char* secret :
         {"secretvalue", "unquoted_secret_word", "plain secret", "secretheader"}) {
      EXPECT_EQ(message.find(secret), std::string::npos) << message;
    }
  }
}

}  // namespace
}  // namespace tokenwatch::tokens
