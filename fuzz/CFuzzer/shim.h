#include <stddef.h>
#include <stdint.h>

// libFuzzer's entry point for programs that have their own main (compiler-rt's FuzzerInterface.h):
// SwiftPM gives every executable target a Swift main, so the fuzz targets start libFuzzer here
// rather than through the main of -sanitize=fuzzer. It is linked in by -sanitize=fuzzer.
int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size));
