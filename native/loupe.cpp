// loupe command line (filled in by the LLaMA / vision issues).
#include <cstdio>
int main() { std::fprintf(stderr, "loupe: not built yet\n"); return 1; }
