#!/usr/bin/env python3
"""Runs a bcc Python tool (here Debian 12's /usr/sbin/memleak-bpfcc) unchanged, with one bcc bug
worked around.

bcc's Python binding declares bpf_attach_uprobe() with 6 arguments while libbcc (since 0.17) takes
7: the last one, ref_ctr_offset, is then whatever the caller left in that register (6 on the
bench machine). The kernel keys a uprobe by (inode, offset) and refuses (EINVAL,
"ref_ctr_offset mismatch" in dmesg) a second probe at the same place with another ref_ctr_offset,
so memleak-bpfcc cannot attach while any other tool (memprof included) probes malloc, and while it
runs every other tool's probe there fails. Upstream: iovisor/bcc#5236, iovisor/bcc#5269.
Here ref_ctr_offset is passed as 0, as the callers mean.

Usage: memleak_shim.py /usr/sbin/memleak-bpfcc ARGS...
"""
import ctypes as ct
import runpy
import sys

from bcc import libbcc

_real = libbcc.lib.bpf_attach_uprobe
_real.restype = ct.c_int
_real.argtypes = [ct.c_int, ct.c_int, ct.c_char_p, ct.c_char_p, ct.c_ulonglong, ct.c_int,
                  ct.c_uint32]


def _attach_uprobe(progfd, attach_type, ev_name, binary_path, offset, pid, ref_ctr_offset=0):
    return _real(progfd, attach_type, ev_name, binary_path, offset, pid, ref_ctr_offset)


libbcc.lib.bpf_attach_uprobe = _attach_uprobe

if len(sys.argv) < 2:
    sys.exit("usage: memleak_shim.py SCRIPT [ARGS...]")
script = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(script, run_name="__main__")
