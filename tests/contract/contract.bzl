"""backend_contract_test: runs the shared backend contract suite on one backend."""

def backend_contract_test(name, backend, plugin, settings = "", lab = None, **kwargs):
    """The contract suite against `backend`, loaded from `plugin` as production does.

    Args:
      name: test name.
      backend: the backend's registered name.
      plugin: label of its latchkey-NAME.so.
      settings: the backend's settings in conf syntax; @TMP@ is replaced by
        a fresh private directory per test, @LAB@ by the lab's directory.
      lab: a cc_library that registers a gtest Environment starting the
        backend's lab (daemons) and setting LATCHKEY_CONTRACT_LAB.
      **kwargs: passed to cc_test (tags, size, ...).
    """
    native.cc_test(
        name = name,
        args = [
            "--backend=" + backend,
            "--plugin=$(rootpath %s)" % plugin,
            "'--settings=" + settings + "'",
            "--holder=$(rootpath //tests/contract:lock_holder)",
        ],
        data = [
            plugin,
            "//tests/contract:lock_holder",
            "//tests/testdata:latchkey-badabi.so",
        ],
        deps = ["//tests/contract:contract_suite"] + ([lab] if lab else []),
        **kwargs
    )
