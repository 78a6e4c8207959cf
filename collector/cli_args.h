#pragma once

#include <string>
#include <vector>

namespace tokenwatch::collector {

// Abseil names flags with underscores; operators type dashes (--tls-cert, as
// in the README). Both spellings are accepted: dashes in a flag's name become
// underscores before parsing. `storage` owns the rewritten strings.
std::vector<char*> DashesToUnderscores(int argc, char** argv, std::vector<std::string>* storage);

// The whole file at `path`; false when it cannot be read or is empty.
bool ReadFile(const std::string& path, std::string* out);

}  // namespace tokenwatch::collector
