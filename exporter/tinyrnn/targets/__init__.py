"""Where the C runs: ``toolchain`` (gcc/clang, linking, QEMU), ``host`` (gcc + cffi),
``boards``, ``cross`` (board images, QEMU and flashing), ``profile`` with ``costs``,
``emulator``, ``profile_image`` and ``qemucheck`` (cycle and size figures), and ``package``
(CMake, Zephyr, Arduino, PlatformIO and CMSIS-Pack libraries)."""
