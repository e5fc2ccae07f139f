"""Compatibility: ``python -m fcgiserver.reexec check ...`` runs process/reexec.py.

A supervisor started before fcgiserver's modules moved into subpackages runs that command to try
the new code before a reload; the code itself is in fcgiserver/process/reexec.py.
"""

import runpy

if __name__ == "__main__":
    runpy.run_module("fcgiserver.process.reexec", run_name="__main__", alter_sys=True)
