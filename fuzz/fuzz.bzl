"""latchkey_fuzzer: one libFuzzer target that is also a corpus regression test."""

def latchkey_fuzzer(name, srcs, deps = [], data = [], linkopts = [], **kwargs):
    """A fuzz target (LLVMFuzzerTestOneInput in `srcs`) in three forms.

    NAME: under --config=fuzz (clang, scripts/fuzz) the libFuzzer binary;
      in any other build a replay binary that runs each file or directory
      given as an argument through the target once (for reproducers, under
      gcc or --config=asan).
    NAME_corpus_test: a test in every build that replays corpus/NAME/ and
      regressions/NAME/ through the target, so `bazel test //...` checks
      every seed and every saved crash.

    Args:
      name: the target's name; its seeds are in corpus/NAME/.
      srcs: the sources defining LLVMFuzzerTestOneInput (and optionally
        LLVMFuzzerInitialize).
      deps: what they need.
      data: runtime files (plugins).
      linkopts: extra link options.
      **kwargs: passed to each rule.
    """
    native.cc_library(
        name = name + "_target",
        testonly = True,
        srcs = srcs,
        deps = deps + ["//fuzz:fuzz_util"],
        alwayslink = True,
        **kwargs
    )
    native.cc_binary(
        name = name,
        testonly = True,
        data = data,
        # -rdynamic: dlopened plugins find the coverage and sanitizer hooks
        # (and libvirt's error reporter, for the libvirt target) in the binary.
        linkopts = linkopts + ["-rdynamic"] + select({
            "//fuzz:libfuzzer": ["-fsanitize=fuzzer"],
            "//conditions:default": [],
        }),
        deps = [":" + name + "_target"] + select({
            "//fuzz:libfuzzer": [],
            "//conditions:default": ["//fuzz:replay_main"],
        }),
        **kwargs
    )
    native.cc_test(
        name = name + "_corpus_test",
        size = "small",
        args = ["fuzz/corpus/" + name, "fuzz/regressions/" + name],
        data = data + native.glob(["corpus/%s/**" % name, "regressions/%s/**" % name]),
        linkopts = linkopts + ["-rdynamic"],
        deps = [":" + name + "_target", "//fuzz:replay_main"],
        **kwargs
    )
