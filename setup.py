"""The compiled accelerator: setuptools reads this beside pyproject.toml (which has the rest).

fcgiserver.protocol._speedups, fcgiserver.shm._slotstore, fcgiserver.net._conn and
fcgiserver.wsgi._bridge are optional: without a C compiler or Python's headers the build
says so and goes on, and the package runs its pure-Python code (see fcgiserver/protocol/accel.py). On Debian: apt-get install gcc python3-dev.
"""

from setuptools import Extension, setup

_FLAGS = ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"]

setup(
    ext_modules=[
        Extension(name, [source], optional=True, extra_compile_args=_FLAGS)
        for name, source in (
            ("fcgiserver.protocol._speedups", "fcgiserver/protocol/_speedups.c"),
            ("fcgiserver.shm._slotstore", "fcgiserver/shm/_slotstore.c"),
            ("fcgiserver.net._conn", "fcgiserver/net/_conn.c"),
            ("fcgiserver.wsgi._bridge", "fcgiserver/wsgi/_bridge.c"),
        )
    ],
)
