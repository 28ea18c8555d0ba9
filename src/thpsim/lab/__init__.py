"""The kernel lab: guest kernels (built from Debian sources, optionally with a patch series, or Debian's
prebuilt images) booted under QEMU to run thpsim commands on kernels the host does not run."""
