#include "agent/detect/policy.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "gtest/gtest.h"

namespace tokenwatch::detect {
namespace {

constexpr char kExample[] = R"(node_name: n1
policy:
  learning:
    enabled: true
    window: 12h
  host_executables:
    - /usr/local/bin/node-backup
    - exe: /opt/agent/*
      sha256: 9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08
  rules:
    TW001: high
    token-read-host: off
  workloads:
    - namespace: payments
      workload: api
      container: server
      executables:
        - /usr/local/bin/vault-agent
      apiserver_contact: false
      rules:
        TW001: low
    - namespace: kube-*
      executables:
        - exe: /usr/bin/coredns
      apiserver_contact: true
)";

std::shared_ptr<const Policy> MustParse(const std::string& text) {
  auto p = Policy::Parse(text, "agent.yaml");
  EXPECT_TRUE(p.ok()) << p.status();
  return p.ok() ? *p : std::make_shared<const Policy>();
}

WorkloadKey Key(std::string ns, std::string workload, std::string container) {
  return WorkloadKey{std::move(ns), std::move(workload), std::move(container), "sa", ""};
}

TEST(Policy, ParsesTheDocumentedExample) {
  auto p = MustParse(kExample);
  EXPECT_TRUE(p->learning().enabled);
  EXPECT_EQ(p->learning().window, absl::Hours(12));
  ASSERT_EQ(p->host_executables().size(), 2u);
  EXPECT_EQ(p->host_executables()[1].sha256,
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08");
  ASSERT_EQ(p->workloads().size(), 2u);
  EXPECT_EQ(p->workloads()[0].line, 14);
}

TEST(Policy, AbsentKeyGivesQuietDefaults) {
  auto p = MustParse("node_name: n1\n");
  EXPECT_TRUE(p->learning().enabled);
  EXPECT_EQ(p->learning().window, absl::Hours(24));
  EXPECT_EQ(p->Match(Key("a", "b", "/c")), nullptr);
  EXPECT_EQ(p->RuleSeverity("TW001", v1::SEVERITY_MEDIUM, nullptr), v1::SEVERITY_MEDIUM);
}

TEST(Policy, MatchesFirstEntryByGlobsAndContainerBasename) {
  auto p = MustParse(kExample);
  const WorkloadPolicy* w = p->Match(Key("payments", "api", "/app/server"));
  ASSERT_NE(w, nullptr);
  EXPECT_EQ(w->apiserver_contact, false);
  EXPECT_EQ(p->Match(Key("payments", "api", "/app/worker")), nullptr);
  const WorkloadPolicy* k = p->Match(Key("kube-system", "coredns", "/coredns"));
  ASSERT_NE(k, nullptr);
  EXPECT_EQ(k->apiserver_contact, true);
  EXPECT_EQ(p->Match(Key("default", "api", "/app/server")), nullptr);
}

TEST(Policy, RuleSeverityWorkloadThenGlobalThenBase) {
  auto p = MustParse(kExample);
  const WorkloadPolicy* w = p->Match(Key("payments", "api", "/app/server"));
  EXPECT_EQ(p->RuleSeverity("TW001", v1::SEVERITY_MEDIUM, w), v1::SEVERITY_LOW);
  EXPECT_EQ(p->RuleSeverity("TW001", v1::SEVERITY_MEDIUM, nullptr), v1::SEVERITY_HIGH);
  EXPECT_EQ(p->RuleSeverity("TW003", v1::SEVERITY_HIGH, nullptr), std::nullopt);
  EXPECT_EQ(p->RuleSeverity("TW002", v1::SEVERITY_CRITICAL, w), v1::SEVERITY_CRITICAL);
}

struct BadCase {
  const char* name;
  const char* yaml;
  const char* expected;  // the whole one-line error
};

TEST(Policy, RejectsMalformedConfigsWithFileLineAndKey) {
  const BadCase kCases[] = {
      {"unknown top key", "policy:\n  learn: {}\n",
       "config agent.yaml:2: key 'policy.learn': unknown key (known: learning, host_executables, "
       "rules, workloads)"},
      {"unknown workload key", "policy:\n  workloads:\n    - namespace: a\n      exe: /x\n",
       "config agent.yaml:4: key 'policy.workloads[0].exe': unknown key (known: namespace, "
       "workload, container, service_account, executables, apiserver_contact, rules)"},
      {"wrong type: workloads not a list", "policy:\n  workloads: {namespace: a}\n",
       "config agent.yaml:2: key 'policy.workloads': expected a list"},
      {"wrong type: bool", "policy:\n  workloads:\n    - apiserver_contact: maybe\n",
       "config agent.yaml:3: key 'policy.workloads[0].apiserver_contact': 'maybe' is not true or "
       "false"},
      {"bad glob", "policy:\n  workloads:\n    - namespace: a\n    - workload: 'api-[x'\n",
       "config agent.yaml:4: key 'policy.workloads[1].workload': bad glob 'api-[x': '[' is never "
       "closed"},
      {"bad duration", "policy:\n  learning:\n    window: 3 days\n",
       "config agent.yaml:3: key 'policy.learning.window': '3 days' is not a positive duration "
       "such as 24h or 90m"},
      {"duplicate workload",
       "policy:\n  workloads:\n    - namespace: a\n      workload: b\n    - workload: b\n"
       "      namespace: a\n",
       "config agent.yaml:5: key 'policy.workloads[1]': duplicate workload: same selectors as "
       "policy.workloads[0] (line 3)"},
      {"relative exe", "policy:\n  workloads:\n    - executables: [vault]\n",
       "config agent.yaml:3: key 'policy.workloads[0].executables[0]': 'vault' is not a full "
       "path (starts with /)"},
      {"bad sha256",
       "policy:\n  host_executables:\n    - exe: /bin/x\n      sha256: abc\n",
       "config agent.yaml:4: key 'policy.host_executables[0].sha256': 'abc' is not 64 "
       "hexadecimal digits"},
      {"unknown rule", "policy:\n  rules:\n    TW999: off\n",
       "config agent.yaml:3: key 'policy.rules.TW999': unknown rule (use an id such as TW001 or "
       "its name)"},
      {"bad severity", "policy:\n  rules:\n    TW001: loud\n",
       "config agent.yaml:3: key 'policy.rules.TW001': 'loud' is not one of off, low, medium, "
       "high, critical"},
      {"rule set twice", "policy:\n  rules:\n    TW001: low\n    token-read-unexpected: high\n",
       "config agent.yaml:4: key 'policy.rules.token-read-unexpected': TW001 is set twice"},
      {"exe entry without exe", "policy:\n  host_executables:\n    - sha256: " 
       "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\n",
       "config agent.yaml:3: key 'policy.host_executables[0].exe': missing (the executable's "
       "path)"},
      {"policy not a mapping", "policy: [1, 2]\n",
       "config agent.yaml:1: key 'policy': expected a mapping"},
      {"yaml syntax", "policy:\n  rules: {TW001: low\n",
       nullptr},
  };
  for (const BadCase& c : kCases) {
    auto p = Policy::Parse(c.yaml, "agent.yaml");
    ASSERT_FALSE(p.ok()) << c.name;
    std::string message(p.status().message());
    EXPECT_EQ(message.find('\n'), std::string::npos) << c.name;
    if (c.expected != nullptr) {
      EXPECT_EQ(message, c.expected) << c.name;
    } else {
      EXPECT_EQ(message.rfind("config agent.yaml:", 0), 0u) << c.name << ": " << message;
    }
  }
}

TEST(Policy, UnreadableFileIsAnError) {
  auto p = Policy::LoadFile("/nonexistent/agent.yaml");
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(std::string(p.status().message()).rfind("config /nonexistent/agent.yaml: cannot read",
                                                    0),
            0u)
      << p.status();
}

TEST(Policy, ADirectoryIsNotAnEmptyPolicy) {
  char dir_template[] = "/tmp/policydirXXXXXX";
  ASSERT_NE(mkdtemp(dir_template), nullptr);
  auto p = Policy::LoadFile(dir_template);
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(std::string(p.status().message()),
            std::string("config ") + dir_template + ": cannot read the file: Is a directory");
  rmdir(dir_template);
}

TEST(Glob, ValidatesAndMatches) {
  EXPECT_TRUE(ValidateGlob("/usr/bin/*").ok());
  EXPECT_TRUE(ValidateGlob("a[]b]").ok());
  EXPECT_FALSE(ValidateGlob("").ok());
  EXPECT_FALSE(ValidateGlob("a\\").ok());
  EXPECT_FALSE(ValidateGlob("a[b").ok());
  EXPECT_TRUE(GlobMatch("/opt/*", "/opt/a/b"));
  EXPECT_FALSE(GlobMatch("/opt/a", "/opt/ab"));
}

TEST(ExeHasher, HashesTheLiveProcessAndCachesByFile) {
  char dir_template[] = "/tmp/exehasherXXXXXX";
  ASSERT_NE(mkdtemp(dir_template), nullptr);
  std::string path = std::string(dir_template) + "/f";
  { std::ofstream(path) << "abc"; }
  ExeHasher hasher;
  auto h = hasher.OfFile(path);
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(*h, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  ASSERT_TRUE(hasher.OfFile(path).ok());
  EXPECT_EQ(hasher.files_hashed(), 1u);
  // A changed file (new size and mtime) is hashed again.
  { std::ofstream(path) << "abcd"; }
  auto h2 = hasher.OfFile(path);
  ASSERT_TRUE(h2.ok());
  EXPECT_NE(*h2, *h);
  EXPECT_EQ(hasher.files_hashed(), 2u);
  auto self = hasher.OfProcess(static_cast<uint32_t>(getpid()));
  EXPECT_TRUE(self.ok()) << self.status();
  EXPECT_EQ(self->size(), 64u);
  EXPECT_FALSE(hasher.OfProcess(0x7ffffff0).ok());
  std::remove(path.c_str());
  rmdir(dir_template);
}

TEST(PolicyStore, BadReloadKeepsOldPolicyAndIsCounted) {
  char dir_template[] = "/tmp/policystoreXXXXXX";
  ASSERT_NE(mkdtemp(dir_template), nullptr);
  std::string path = std::string(dir_template) + "/agent.yaml";
  { std::ofstream(path) << "policy:\n  rules:\n    TW001: low\n"; }
  auto initial = Policy::LoadFile(path);
  ASSERT_TRUE(initial.ok());
  PolicyStore store(*initial, path);
  { std::ofstream(path) << "policy:\n  rules:\n    TW001: loud\n"; }
  absl::Status s = store.Reload();
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(store.stats().failures, 1u);
  EXPECT_EQ(store.Current()->RuleSeverity("TW001", v1::SEVERITY_MEDIUM, nullptr),
            v1::SEVERITY_LOW);
  // The same bad content seen again through inotify is not counted twice.
  EXPECT_TRUE(store.Reload(/*only_if_changed=*/true).ok());
  EXPECT_EQ(store.stats().failures, 1u);
  { std::ofstream(path) << "policy:\n  rules:\n    TW001: off\n"; }
  EXPECT_TRUE(store.Reload(true).ok());
  EXPECT_EQ(store.stats().successes, 1u);
  EXPECT_EQ(store.Current()->RuleSeverity("TW001", v1::SEVERITY_MEDIUM, nullptr), std::nullopt);
  // A file replaced by a directory is rejected before anything else reads it.
  std::remove(path.c_str());
  ASSERT_EQ(mkdir(path.c_str(), 0700), 0);
  bool checked = false;
  PolicyStore guarded(*initial, path, [&](const std::string&) {
    checked = true;
    return absl::OkStatus();
  });
  EXPECT_FALSE(guarded.Reload().ok());
  EXPECT_FALSE(checked);
  EXPECT_EQ(guarded.Current()->RuleSeverity("TW001", v1::SEVERITY_MEDIUM, nullptr),
            v1::SEVERITY_LOW);
  rmdir(path.c_str());
  { std::ofstream(path) << "policy:\n  rules:\n    TW001: off\n"; }
  // An extra check on the agent's own keys can veto a reload.
  PolicyStore vetoed(*initial, path,
                     [](const std::string&) { return absl::InvalidArgumentError("bad key"); });
  EXPECT_FALSE(vetoed.Reload().ok());
  EXPECT_EQ(vetoed.Current()->RuleSeverity("TW001", v1::SEVERITY_MEDIUM, nullptr),
            v1::SEVERITY_LOW);
  std::remove(path.c_str());
  rmdir(dir_template);
}

TEST(ConfigFileWatcher, SeesARenameOverTheFile) {
  char dir_template[] = "/tmp/cfgwatchXXXXXX";
  ASSERT_NE(mkdtemp(dir_template), nullptr);
  std::string path = std::string(dir_template) + "/agent.yaml";
  { std::ofstream(path) << "a: 1\n"; }
  auto watcher = ConfigFileWatcher::Create(path);
  ASSERT_TRUE(watcher.ok()) << watcher.status();
  EXPECT_FALSE((*watcher)->Poll());
  { std::ofstream(path + ".new") << "a: 2\n"; }
  ASSERT_EQ(std::rename((path + ".new").c_str(), path.c_str()), 0);
  EXPECT_TRUE((*watcher)->Poll());
  EXPECT_FALSE((*watcher)->Poll());
  std::remove(path.c_str());
  rmdir(dir_template);
}

}  // namespace
}  // namespace tokenwatch::detect
