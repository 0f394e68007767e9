#!/usr/bin/env python3
"""Generates the conformance corpus (conformance/scenarios/*.json).

The JSON files are the corpus under version control and what the tests run; this
script is how they were written and how to regenerate them after a change here
(files named example-*.json are the hand-written examples of conformance/README.md,
which this script leaves alone):

    python3 conformance/tools/gen_scenarios.py            # rewrite the corpus
    python3 conformance/tools/gen_scenarios.py --check    # fail if a file is stale

Rules every scenario follows (see conformance/DEVIATIONS.md for why):
- observe only what the VT-d spec fixes: no cache content after a table change
  without invalidation, no timing, no implementation-chosen fields (CAIG/IAIG,
  RTPS/IRTPS latching), masked FRCD PP/PASID in scalable mode;
- never a write that hits an IOTLB entry filled by a read of a read-only page,
  never rely on D for a write that hits a read-filled IOTLB entry,
  never a wait descriptor with both SW and IF;
- one fault pending at a time (the unit has one fault record and coalescing of
  faults from one requester is an implementation choice);
- guest data at 0x1000000 and up; the edu device is 00:01.0 (source-id 0x0008).
"""

import json
import os
import sys

# ---- unit registers -------------------------------------------------------
VER, CAP, ECAP = 0x0, 0x8, 0x10
GCMD, GSTS, RTADDR, CCMD = 0x18, 0x1C, 0x20, 0x28
FSTS, FECTL, FEDATA, FEADDR, FEUADDR = 0x34, 0x38, 0x3C, 0x40, 0x44
PMEN = 0x64
IQH, IQT, IQA, ICS = 0x80, 0x88, 0x90, 0x9C
IECTL, IEDATA, IEADDR, IEUADDR = 0xA0, 0xA4, 0xA8, 0xAC
IRTA = 0xB8
IVA, IOTLB = 0xF0, 0xF8  # ECAP.IRO = 15
FRCD_LO, FRCD_HI = 0x220, 0x228  # CAP.FRO = 34, one record

TE, SRTP, QIE, IRE, SIRTP = 1 << 31, 1 << 30, 1 << 26, 1 << 25, 1 << 24
TES, RTPS, QIES, IRES, IRTPS = TE, SRTP, QIE, IRE, SIRTP

FSTS_PPF, FSTS_IQE = 1 << 1, 1 << 4
ICS_IWC = 1

# FRCD high qword fields that the spec fixes for a request without PASID:
# F, T, AT, FR, PP (= 0) and SID. The PASID field means nothing while PP = 0 (QEMU
# leaves 0xffff there in legacy mode), so it is never observed.
FRCD_HI_LEGACY_MASK = 0xF00000FF8000FFFF
# In scalable mode QEMU reports PP = 1 / PASID 0 for walk faults of requests without
# PASID, so PP is left out too (DEVIATIONS.md).
FRCD_HI_SM_MASK = 0xF00000FF0000FFFF
# ... and without FR, where QEMU reports a legacy reason in scalable mode.
FRCD_HI_SM_NOFR_MASK = 0xF00000000000FFFF

EDU_SID = 0x0008
EDU_DEVFN = 8

# ---- scenario builder -------------------------------------------------------


def h(v):
    return hex(v)


class S:
    """One scenario: a list of steps plus helpers that emit them."""

    def __init__(self, name, iommu="", memory_mb=256, description=""):
        self.name = name
        self.iommu = iommu
        self.memory_mb = memory_mb
        self.description = description
        self.steps = []
        self.gcmd_bits = 0  # persistent GCMD bits (TE, QIE, IRE) last set
        self.tables = {}  # table address -> {index: value} (emitted entries)
        self.next_page = 0x1100000  # page allocator for tables
        self.qi = None  # (base, dw, tail)

    # raw steps
    def w64(self, gpa, *values):
        self.steps.append({"op": "write64", "gpa": h(gpa), "values": [h(v) for v in values]})

    def fill(self, gpa, length, byte):
        self.steps.append({"op": "fill", "gpa": h(gpa), "len": h(length), "byte": h(byte)})

    def wr(self, off, size, value):
        self.steps.append({"op": "mmio_write", "off": h(off), "size": size, "value": h(value)})

    def rd(self, off, size, mask=None):
        st = {"op": "mmio_read", "off": h(off), "size": size}
        if mask is not None:
            st["mask"] = h(mask)
        self.steps.append(st)

    def poll(self, off, size, mask, value, max_reads=None):
        st = {"op": "poll", "off": h(off), "size": size, "mask": h(mask), "value": h(value)}
        if max_reads is not None:
            st["max"] = max_reads
        self.steps.append(st)

    def dma(self, direction, iova, length, dev_off=0):
        self.steps.append(
            {"op": "dma", "dir": direction, "iova": h(iova), "len": length, "dev_off": dev_off}
        )

    def dump(self, gpa, length):
        self.steps.append({"op": "dump", "gpa": h(gpa), "len": length})

    # memory helpers
    def page(self):
        p = self.next_page
        self.next_page += 0x1000
        return p

    def pattern(self, gpa, seed, qwords=2):
        """Writes distinct recognisable bytes at gpa."""
        vals = []
        for i in range(qwords):
            b = [(seed * 16 + i * 8 + j) & 0xFF for j in range(8)]
            vals.append(int.from_bytes(bytes(b), "little"))
        self.w64(gpa, *vals)

    def entry(self, table, index, value):
        self.tables.setdefault(table, {})[index] = value
        self.w64(table + 8 * index, value)

    # ---- paging structures ----
    def ss_map(self, top, levels, iova, gpa, leaf_level=1, perm=3, extra=0):
        """Second-stage mapping (R=1, W=2). Non-leaf entries are R|W."""
        return self._map(top, levels, iova, gpa, leaf_level, perm | extra, 3, True)

    def fs_map(self, top, iova, gpa, leaf_level=1, flags=0x7, nonleaf=0x7):
        """First-stage 4-level mapping (P=1, RW=2, US=4; PS added for large leaves)."""
        return self._map(top, 4, iova, gpa, leaf_level, flags, nonleaf, False)

    def _map(self, top, levels, iova, gpa, leaf_level, leaf_flags, nonleaf_flags, ss):
        table = top
        for level in range(levels, leaf_level, -1):
            idx = (iova >> (12 + 9 * (level - 1))) & 0x1FF
            ent = self.tables.get(table, {}).get(idx)
            if ent is None:
                nxt = self.page()
                self.entry(table, idx, nxt | nonleaf_flags)
                table = nxt
            else:
                table = ent & 0x000FFFFFFFFFF000
        idx = (iova >> (12 + 9 * (leaf_level - 1))) & 0x1FF
        value = gpa | leaf_flags
        if leaf_level > 1:
            value |= 1 << 7  # PS
        self.entry(table, idx, value)
        return table + 8 * idx  # address of the leaf entry

    # ---- root / context / PASID ----
    def legacy_context(self, root, ctx, slptptr, aw=2, tt=0, did=1, fpd=0, present=1,
                       hi_extra=0, lo_extra=0):
        self.w64(root, ctx | 1, 0)
        self.w64(ctx + 16 * EDU_DEVFN,
                 slptptr | (tt << 2) | (fpd << 1) | present | lo_extra,
                 (did << 8) | aw | hi_extra)

    def sm_context(self, root, ctx, pasid_dir, fpd=0, present=1, pdts=0, rid_pasid=0):
        self.w64(root, ctx | 1, 0)
        self.w64(ctx + 32 * EDU_DEVFN,
                 pasid_dir | (pdts << 9) | (fpd << 1) | present, rid_pasid, 0, 0)

    def pasid_dir_entry(self, pdir, index, ptable, present=1, fpd=0):
        self.w64(pdir + 8 * index, ptable | (fpd << 1) | present)

    def pasid_entry(self, ptable, pasid, pgtt, did, aw=2, ssptptr=0, fsptptr=0, fpd=0,
                    present=1):
        base = ptable + 64 * (pasid & 0x3F)
        self.w64(base,
                 ssptptr | (pgtt << 6) | (aw << 2) | (fpd << 1) | present,
                 did, fsptptr, 0, 0, 0, 0, 0)

    # ---- global command ----
    def gcmd(self, set_bits=0, clear_bits=0, oneshot=0):
        self.gcmd_bits = (self.gcmd_bits | set_bits) & ~clear_bits
        self.wr(GCMD, 4, self.gcmd_bits | oneshot)

    def set_root(self, root, scalable=False):
        self.wr(RTADDR, 8, root | ((1 << 10) if scalable else 0))
        self.gcmd(oneshot=SRTP)
        self.poll(GSTS, 4, RTPS, RTPS)

    def te_on(self):
        self.gcmd(set_bits=TE)
        self.poll(GSTS, 4, TES, TES)

    def te_off(self):
        self.gcmd(clear_bits=TE)
        self.poll(GSTS, 4, TES, 0)

    # ---- register-based invalidation ----
    def cc_reg(self, gran, did=0, sid=0, fm=0):
        g = {"global": 1, "domain": 2, "device": 3}[gran]
        self.wr(CCMD, 8, (1 << 63) | (g << 61) | (fm << 32) | (sid << 16) | did)
        self.poll(CCMD, 8, 1 << 63, 0)

    def iotlb_reg(self, gran, did=0, addr=0, am=0, ih=0):
        g = {"global": 1, "domain": 2, "page": 3}[gran]
        if gran == "page":
            self.wr(IVA, 8, addr | (ih << 6) | am)
        self.wr(IOTLB, 8, (1 << 63) | (g << 60) | (did << 32))
        self.poll(IOTLB, 8, 1 << 63, 0)

    # ---- queued invalidation ----
    def qi_on(self, base, dw=0, qs=0):
        self.wr(IQT, 8, 0)
        self.wr(IQA, 8, base | (dw << 11) | qs)
        self.gcmd(set_bits=QIE)
        self.poll(GSTS, 4, QIES, QIES)
        self.qi = [base, dw, 0]

    def qi_write(self, descs):
        """Writes descriptors at the tail without submitting; returns the new tail."""
        base, dw, tail = self.qi
        size = 32 if dw else 16
        for d in descs:
            d = list(d) + [0] * ((4 if dw else 2) - len(d))
            self.w64(base + tail * size, *d)
            tail += 1
        self.qi[2] = tail
        return tail

    def qi_tail(self, tail=None):
        base, dw, cur = self.qi
        t = cur if tail is None else tail
        self.wr(IQT, 8, t << (5 if dw else 4))

    def qi_submit(self, descs, wait=True):
        """Submits descriptors followed by a wait (IF); polls ICS.IWC and clears it."""
        if wait:
            descs = list(descs) + [wait_desc(irq=True)]
        self.qi_write(descs)
        self.qi_tail()
        if wait:
            self.poll(ICS, 4, ICS_IWC, ICS_IWC)
            self.wr(ICS, 4, ICS_IWC)

    # ---- faults ----
    def faults(self, scalable=False, fr=True):
        """FSTS, the fault record and FECTL."""
        self.rd(FSTS, 4)
        self.rd(FRCD_LO, 8)
        if scalable:
            self.rd(FRCD_HI, 8, FRCD_HI_SM_MASK if fr else FRCD_HI_SM_NOFR_MASK)
        else:
            self.rd(FRCD_HI, 8, FRCD_HI_LEGACY_MASK)
        self.rd(FECTL, 4)

    def clear_fault(self):
        """Clears F of the record (dword write, as Linux does), then FSTS."""
        self.wr(FRCD_HI + 4, 4, 1 << 31)
        self.wr(FSTS, 4, 0x83)

    def no_fault(self):
        self.rd(FSTS, 4)
        self.rd(FRCD_HI, 8, 1 << 63)
        self.rd(FECTL, 4)

    # ---- data movement ----
    def copy_check(self, src_iova, dst_iova, dst_gpa, length=16, dev_off=0):
        """Reads src through the IOMMU into the device, writes it back to dst, dumps dst."""
        self.dma("to_device", src_iova, length, dev_off)
        self.dma("from_device", dst_iova, length, dev_off)
        self.dump(dst_gpa, length)

    def json(self):
        d = {"name": self.name}
        if self.description:
            d["description"] = self.description
        d["iommu"] = self.iommu
        d["memory_mb"] = self.memory_mb
        d["steps"] = self.steps
        return d


# ---- descriptors -------------------------------------------------------------


def cc_desc(gran, did=0, sid=0, fm=0):
    g = {"global": 1, "domain": 2, "device": 3}[gran]
    return [0x1 | (g << 4) | (did << 16) | (sid << 32) | (fm << 48), 0]


def iotlb_desc(gran, did=0, addr=0, am=0, ih=0, dr=0, dw=0):
    g = {"global": 1, "domain": 2, "page": 3}[gran]
    return [0x2 | (g << 4) | (dw << 6) | (dr << 7) | (did << 16), addr | (ih << 6) | am]


def devtlb_desc(sid, addr=0, size=0, qdep=0):
    return [0x3 | (qdep << 16) | (sid << 32), addr | size]


def iec_desc(index=None, im=0):
    if index is None:
        return [0x4, 0]
    return [0x4 | (1 << 4) | (im << 27) | (index << 32), 0]


def wait_desc(irq=False, sw=False, data=0, addr=0, fn=0):
    assert not (irq and sw), "QEMU 10.0.2 aborts on SW+IF (DEVIATIONS.md)"
    return [0x5 | (irq << 4) | (sw << 5) | (fn << 6) | (data << 32), addr]


def piotlb_desc(gran, did, pasid, addr=0, am=0, ih=0):
    g = {"pasid": 2, "page": 3}[gran]
    return [0x6 | (g << 4) | (did << 16) | (pasid << 32), addr | (ih << 6) | am, 0, 0]


def pasid_devtlb_desc(sid, pasid, addr=0, size=0, glob=0):
    return [0x8 | (sid << 16) | (pasid << 32), addr | (size << 11) | glob, 0, 0]


def pc_desc(gran, did, pasid=0):
    g = {"domain": 0, "pasid": 1, "global": 3}[gran]
    return [0x7 | (g << 4) | (did << 16) | (pasid << 32), 0, 0, 0]


# ---- common layouts ------------------------------------------------------------------

ROOT = 0x1000000
CTX = 0x1001000
PDIR = 0x1002000
PTABLE = 0x1003000
IQ = 0x1004000
STATUS = 0x1005000
DATA = 0x1400000  # data pages: DATA + n * 0x1000
OUT = 0x1500000  # output pages


def legacy_base(s, levels=4, aw=None, did=1, tt=0):
    """Root + context for the edu device; returns the second-stage top table."""
    top = s.page()
    s.legacy_context(ROOT, CTX, top, aw=(levels - 2) if aw is None else aw, tt=tt, did=did)
    return top


def legacy_enable(s):
    s.set_root(ROOT)
    s.te_on()


def sm_base(s, pgtt, did=2, aw=2):
    """Scalable root/context/PASID directory/PASID-0 entry; returns the top table."""
    top = s.page()
    s.sm_context(ROOT, CTX, PDIR)
    s.pasid_dir_entry(PDIR, 0, PTABLE)
    if pgtt == 1:
        s.pasid_entry(PTABLE, 0, 1, did, aw=aw, fsptptr=top)
    elif pgtt == 2:
        s.pasid_entry(PTABLE, 0, 2, did, aw=aw, ssptptr=top)
    else:
        s.pasid_entry(PTABLE, 0, pgtt, did, aw=aw)
    return top


def sm_enable(s):
    s.set_root(ROOT, scalable=True)
    s.te_on()


SM_SS = "x-scalable-mode=on"
SM_FS = "x-scalable-mode=on,x-flts=on"

# ---- the corpus ---------------------------------------------------------------

IDENTITY_ROWS = [
    ("default", ""),
    ("eim", "intremap=on,eim=on"),
    ("sm", "x-scalable-mode=on"),
    ("sm-flts", "x-scalable-mode=on,x-flts=on"),
    ("sm-pasid", "x-scalable-mode=on,x-pasid-mode=on"),
    ("aw39", "aw-bits=39"),
    ("caching-mode", "caching-mode=on"),
    ("sm-flts-nofs1gp-nopt", "x-scalable-mode=on,x-flts=on,fs1gp=off,pt=off"),
    ("device-iotlb", "device-iotlb=on"),
    ("sm-snoop", "snoop-control=on,x-scalable-mode=on"),
]


def identity(out):
    for tag, props in IDENTITY_ROWS:
        s = S(f"identity-{tag}", props,
              description=f"VER/CAP/ECAP and reset values of every register for "
                          f"`{props or '(default properties)'}`")
        for off, size in [(VER, 4), (CAP, 8), (ECAP, 8), (GCMD, 4), (GSTS, 4), (RTADDR, 8),
                          (CCMD, 8), (FSTS, 4), (FECTL, 4), (FEDATA, 4), (FEADDR, 4),
                          (FEUADDR, 4), (PMEN, 4), (IQH, 8), (IQT, 8), (IQA, 8), (ICS, 4),
                          (IECTL, 4), (IEDATA, 4), (IEADDR, 4), (IEUADDR, 4), (IRTA, 8),
                          (IVA, 8), (IOTLB, 8), (FRCD_LO, 8), (FRCD_HI, 8)]:
            s.rd(off, size)
        out.append(s)


# QEMU's firmware keeps the top 128 KiB of RAM: multiboot mem_upper is 0x3fb80 KiB at
# 256 MiB, and scenario data must end below memory_mb MiB - 128 KiB.
FIRMWARE_RESERVED_TOP = 0x20000


def memory_top(out):
    for mb in (64, 256):
        top = (mb << 20) - FIRMWARE_RESERVED_TOP
        s = S(f"ram-top-usable-{mb}m", memory_mb=mb,
              description=f"the last usable page of {mb} MiB, below the 128 KiB the firmware "
                          f"keeps: written by the CPU, copied by edu DMA with translation off, "
                          f"read back")
        s.w64(top - 16, 0x1122334455667788, 0x99AABBCCDDEEFF00)
        s.dma("to_device", top - 0x1000, 0x1000)
        s.fill(top - 0x1000, 0x1000, 0x5A)
        s.dma("from_device", top - 0x1000, 0x1000)
        s.dump(top - 32, 32)
        out.append(s)


def registers(out):
    s = S("regs-readback", description="RW registers read back what was written; GCMD reads 0")
    s.wr(RTADDR, 8, 0x1000000)
    s.rd(RTADDR, 8)
    s.wr(FEDATA, 4, 0x4041)
    s.rd(FEDATA, 4)
    s.wr(FEADDR, 4, 0xFEE00000)
    s.rd(FEADDR, 4)
    s.wr(IEDATA, 4, 0x4042)
    s.rd(IEDATA, 4)
    s.wr(IEADDR, 4, 0xFEE01000)
    s.rd(IEADDR, 4)
    s.wr(IRTA, 8, 0x1010000 | 0x7)
    s.rd(IRTA, 8)
    s.wr(GCMD, 4, SRTP)
    s.poll(GSTS, 4, RTPS, RTPS)
    s.rd(GCMD, 4)
    s.rd(RTADDR, 4)
    s.rd(RTADDR + 4, 4)
    out.append(s)

    s = S("gcmd-te-qie-toggle",
          description="TE and QIE follow GCMD; status bits read back; QI disable after a wait")
    s.set_root(ROOT)
    s.te_on()
    s.rd(GSTS, 4, TES | QIES | IRES)
    s.qi_on(IQ)
    s.rd(GSTS, 4, TES | QIES | IRES)
    s.qi_submit([])
    s.rd(IQH, 8)
    s.rd(IQA, 8)
    s.gcmd(clear_bits=QIE)
    s.poll(GSTS, 4, QIES, 0)
    s.rd(GSTS, 4, TES | QIES | IRES)
    s.te_off()
    s.rd(GSTS, 4, TES | QIES | IRES)
    # register-based invalidation works again once QI is off
    s.cc_reg("global")
    s.iotlb_reg("global")
    out.append(s)

    s = S("gcmd-ire", "intremap=on,eim=on",
          description="SIRTP and IRE with the extended interrupt mode unit")
    s.wr(IRTA, 8, 0x1010000 | (1 << 11) | 0x7)
    s.gcmd(oneshot=SIRTP)
    s.poll(GSTS, 4, IRTPS, IRTPS)
    s.gcmd(set_bits=IRE)
    s.poll(GSTS, 4, IRES, IRES)
    s.rd(IRTA, 8)
    s.gcmd(clear_bits=IRE)
    s.poll(GSTS, 4, IRES, 0)
    out.append(s)


def legacy_translation(out):
    def rw_case(name, props, levels, leaf_level, iova_r, iova_w, desc, aw=None):
        s = S(name, props, description=desc)
        top = legacy_base(s, levels, aw=aw)
        size = {1: 0x1000, 2: 0x200000, 3: 0x40000000}[leaf_level]
        # map iova_r's page/huge page so that iova_r lands on DATA, iova_w on OUT
        if leaf_level == 3:
            base = iova_r & ~(size - 1)
            s.ss_map(top, levels, base, 0, leaf_level)  # 1 GiB page at gpa 0
            src = iova_r - base
            dst = iova_w - base
        elif leaf_level == 2:
            base = iova_r & ~(size - 1)
            s.ss_map(top, levels, base, 0x2000000, leaf_level)  # 2 MiB page at 32 MiB
            src = 0x2000000 + (iova_r - base)
            dst = 0x2000000 + (iova_w - base)
        else:
            s.ss_map(top, levels, iova_r, DATA)
            s.ss_map(top, levels, iova_w, OUT)
            src = DATA + (iova_r & 0xFFF)
            dst = OUT + (iova_w & 0xFFF)
        s.pattern(src, 0x1, 4)
        s.fill(dst, 32, 0xEE)
        legacy_enable(s)
        s.copy_check(iova_r, iova_w, dst, 32)
        s.rd(FSTS, 4)
        out.append(s)

    rw_case("legacy-ss-4level-4k", "", 4, 1, 0x5008, 0x9100,
            "legacy second stage, 4-level, 4 KiB pages: read and write through the unit")
    rw_case("legacy-ss-3level-4k", "", 3, 1, 0x7f_fff0_5000, 0x3_0000_9000,
            "legacy second stage, 3-level table (AW=1) on a 48-bit unit")
    rw_case("legacy-ss-3level-aw39", "aw-bits=39", 3, 1, 0x40_0000_5010, 0x9000,
            "legacy second stage, 3-level table on an aw-bits=39 unit")
    rw_case("legacy-ss-4level-2m", "", 4, 2, 0x8020_3040, 0x8021_0000,
            "legacy second stage, 2 MiB leaf at level 2")
    rw_case("legacy-ss-4level-1g", "", 4, 3, 0x1_4140_0100, 0x1_4150_0000,
            "legacy second stage, 1 GiB leaf at level 3 (maps gpa 0)")
    rw_case("legacy-ss-3level-1g", "aw-bits=39", 3, 3, 0x40_0140_0000, 0x40_0150_0200,
            "legacy second stage, 3-level table with a 1 GiB leaf in the top level")
    rw_case("legacy-ss-3level-2m", "", 3, 2, 0x20_0020_0000, 0x20_0030_0000,
            "legacy second stage, 3-level table with a 2 MiB leaf")

    s = S("legacy-ss-cross-page",
          description="a 4 KiB transfer crossing a page boundary uses two translations")
    top = legacy_base(s)
    s.ss_map(top, 4, 0x10000, DATA + 0x3000)
    s.ss_map(top, 4, 0x11000, DATA + 0x1000)
    s.ss_map(top, 4, 0x20000, OUT + 0x5000)
    s.ss_map(top, 4, 0x21000, OUT + 0x2000)
    s.fill(DATA + 0x3000, 0x1000, 0x3C)
    s.fill(DATA + 0x1000, 0x1000, 0xC3)
    s.pattern(DATA + 0x3800, 0x5, 2)
    s.pattern(DATA + 0x1000, 0x6, 2)
    s.fill(OUT + 0x5000, 0x1000, 0)
    s.fill(OUT + 0x2000, 0x1000, 0)
    legacy_enable(s)
    s.dma("to_device", 0x10800, 0x1000)
    s.dma("from_device", 0x20800, 0x1000)
    s.dump(OUT + 0x5800, 0x20)
    s.dump(OUT + 0x5FF0, 0x10)
    s.dump(OUT + 0x2000, 0x20)
    s.dump(OUT + 0x27F0, 0x10)
    s.dma("from_device", 0x21000, 0x10, 0x800)
    s.dump(OUT + 0x2000, 0x10)
    s.rd(FSTS, 4)
    out.append(s)

    s = S("legacy-device-iotlb-tt1", "device-iotlb=on",
          description="context TT=01 (device-TLB enabled) translates untranslated requests")
    top = legacy_base(s, tt=1)
    s.ss_map(top, 4, 0x5000, DATA)
    s.ss_map(top, 4, 0x6000, OUT)
    s.pattern(DATA, 0x7, 2)
    legacy_enable(s)
    s.copy_check(0x5000, 0x6000, OUT, 16)
    s.rd(FSTS, 4)
    out.append(s)

    s = S("legacy-pass-through", description="context TT=10 (pass-through): IOVA = GPA")
    s.legacy_context(ROOT, CTX, 0, aw=2, tt=2, did=3)
    s.pattern(DATA + 0x40, 0x8, 2)
    s.fill(OUT, 16, 0)
    legacy_enable(s)
    s.copy_check(DATA + 0x40, OUT, OUT, 16)
    s.rd(FSTS, 4)
    out.append(s)

    s = S("translation-disabled", SM_FS,
          description="with GSTS.TES clear DMA is not translated (root table never set)")
    s.pattern(DATA + 0x100, 0x9, 2)
    s.fill(OUT + 0x100, 16, 0x11)
    s.copy_check(DATA + 0x100, OUT + 0x100, OUT + 0x100, 16)
    s.rd(GSTS, 4)
    s.rd(FSTS, 4)
    out.append(s)

    s = S("legacy-not-present-then-present",
          description="CM=0: not-present context and PTEs are not cached; filling them needs no invalidation")
    top = s.page()
    s.w64(ROOT, CTX | 1, 0)
    s.pattern(DATA, 0xA, 2)
    legacy_enable(s)
    s.dma("to_device", 0x5000, 16)
    s.faults()
    s.clear_fault()
    s.legacy_context(ROOT, CTX, top, aw=2)
    s.ss_map(top, 4, 0x6000, OUT)
    s.dma("to_device", 0x5000, 16)  # context now present, PTE not present
    s.faults()
    s.clear_fault()
    s.ss_map(top, 4, 0x5000, DATA)
    s.copy_check(0x5000, 0x6000, OUT, 16)
    s.rd(FSTS, 4)
    out.append(s)

    s = S("caching-mode-psi-after-map", "caching-mode=on",
          description="CM=1: a not-present PTE made present is used after a page-selective invalidation")
    top = legacy_base(s, did=4)
    s.ss_map(top, 4, 0x6000, OUT)
    s.pattern(DATA, 0xB, 2)
    legacy_enable(s)
    s.dma("to_device", 0x5000, 16)
    s.faults()
    s.clear_fault()
    s.ss_map(top, 4, 0x5000, DATA)
    s.iotlb_reg("page", did=4, addr=0x5000)
    s.copy_check(0x5000, 0x6000, OUT, 16)
    s.rd(FSTS, 4)
    out.append(s)


def legacy_faults(out):
    def fault_case(name, desc, build, direction="to_device", iova=0x5000, props="",
                   sm=False, fr=True):
        s = S(name, props, description=desc)
        s.pattern(DATA, 0xC, 2)
        s.fill(OUT, 16, 0x5A)
        build(s)
        if sm:
            sm_enable(s)
        else:
            legacy_enable(s)
        s.dma(direction, iova, 16)
        s.faults(scalable=sm, fr=fr)
        if direction == "from_device":
            s.dump(OUT, 16)
        out.append(s)

    fault_case("legacy-fault-root-not-present", "root entry not present: FR 0x1",
               lambda s: None)
    fault_case("legacy-fault-context-not-present", "context entry not present: FR 0x2",
               lambda s: s.w64(ROOT, CTX | 1, 0))

    def ctx_aw(s):
        top = s.page()
        s.ss_map(top, 4, 0x5000, DATA)
        s.legacy_context(ROOT, CTX, top, aw=3)
    fault_case("legacy-fault-context-aw-unsupported",
               "context AW=3 (57-bit) not in SAGAW: FR 0x3", ctx_aw)

    def ctx_tt(s):
        top = s.page()
        s.ss_map(top, 4, 0x5000, DATA)
        s.legacy_context(ROOT, CTX, top, tt=3)
    fault_case("legacy-fault-context-tt-reserved", "context TT=11 (reserved): FR 0x3",
               ctx_tt)

    def ctx_aw39(s):
        top = s.page()
        s.ss_map(top, 4, 0x5000, DATA)
        s.legacy_context(ROOT, CTX, top, aw=2)
    fault_case("legacy-fault-context-aw48-on-aw39",
               "context AW=2 (48-bit) on an aw-bits=39 unit: FR 0x3", ctx_aw39,
               props="aw-bits=39")

    def ctx_rsvd(s):
        top = s.page()
        s.ss_map(top, 4, 0x5000, DATA)
        s.legacy_context(ROOT, CTX, top, hi_extra=1 << 30)
    fault_case("legacy-fault-context-reserved",
               "context entry with a reserved bit set (hi bit 30): FR 0xb", ctx_rsvd)

    def root_rsvd(s):
        top = s.page()
        s.ss_map(top, 4, 0x5000, DATA)
        s.legacy_context(ROOT, CTX, top)
        s.w64(ROOT, CTX | 1 | (1 << 5), 0)
    fault_case("legacy-fault-root-reserved",
               "root entry with a reserved bit set (bit 5): FR 0xa", root_rsvd)

    def beyond(s):
        top = s.page()
        s.ss_map(top, 3, 0x5000, DATA)
        s.legacy_context(ROOT, CTX, top, aw=1)
    fault_case("legacy-fault-beyond-agaw",
               "IOVA above the 39-bit AGAW of a 3-level context: FR 0x4", beyond,
               iova=0x80_0000_5000)

    def ro(s):
        top = s.page()
        s.ss_map(top, 4, 0x5000, OUT, perm=1)
        s.legacy_context(ROOT, CTX, top)
    fault_case("legacy-fault-write-read-only",
               "device write to a read-only page (first access): FR 0x5, RAM unchanged",
               ro, direction="from_device")

    def np_leaf(s):
        top = s.page()
        s.ss_map(top, 4, 0x6000, DATA)
        s.legacy_context(ROOT, CTX, top)
    fault_case("legacy-fault-read-not-present",
               "device read of a not-present PTE: FR 0x6", np_leaf)

    def wo(s):
        top = s.page()
        s.ss_map(top, 4, 0x5000, DATA, perm=2)
        s.legacy_context(ROOT, CTX, top)
    fault_case("legacy-fault-read-write-only",
               "device read of a write-only page: FR 0x6", wo)

    def np_mid(s):
        top = s.page()
        s.ss_map(top, 4, 0x40000000, DATA)  # builds PML4E and a PDPTE for another 1 GiB
        s.legacy_context(ROOT, CTX, top)
    fault_case("legacy-fault-read-not-present-pdpte",
               "device read through a not-present PDPTE: FR 0x6", np_mid)

    def rsvd_leaf(s):
        top = s.page()
        s.ss_map(top, 4, 0x5000, DATA, extra=1 << 50)
        s.legacy_context(ROOT, CTX, top)
    fault_case("legacy-fault-pte-reserved",
               "leaf PTE with an address bit above the 48-bit host width: FR 0xc", rsvd_leaf)

    def rsvd_2m(s):
        top = s.page()
        s.ss_map(top, 4, 0x0, 0x2000000, leaf_level=2, extra=1 << 13)
        s.legacy_context(ROOT, CTX, top)
    fault_case("legacy-fault-2m-reserved",
               "2 MiB leaf with reserved bit 13 set: FR 0xc", rsvd_2m)

    def ps_pml4(s):
        top = s.page()
        s.ss_map(top, 4, 0x5000, DATA)
        s.entry(top, 0, s.tables[top][0] | (1 << 7))
        s.legacy_context(ROOT, CTX, top)
    fault_case("legacy-fault-pml4e-ps-reserved",
               "PML4E with PS set (reserved at level 4): FR 0xc", ps_pml4)

    # FPD
    s = S("legacy-fault-fpd", description="context FPD=1 suppresses qualified faults, even with P=0")
    top = s.page()
    s.ss_map(top, 4, 0x6000, DATA)
    s.legacy_context(ROOT, CTX, top, fpd=1)
    legacy_enable(s)
    s.dma("to_device", 0x5000, 16)  # PTE not present, qualified
    s.no_fault()
    s.legacy_context(ROOT, CTX, top, fpd=1, present=0)
    s.cc_reg("global")
    s.iotlb_reg("global")
    s.dma("to_device", 0x6000, 16)  # context not present, qualified
    s.no_fault()
    out.append(s)

    # record handling
    s = S("fault-record-clear-and-refault",
          description="FSTS.PPF/FRI, FECTL.IP, clearing F then FSTS, and a second fault")
    top = legacy_base(s)
    s.ss_map(top, 4, 0x6000, OUT)
    legacy_enable(s)
    s.dma("to_device", 0x5000, 8)
    s.faults()
    s.wr(FRCD_HI + 4, 4, 1 << 31)
    s.rd(FRCD_HI, 8, 1 << 63)
    s.rd(FSTS, 4, FSTS_PPF)
    s.wr(FSTS, 4, 0x83)
    s.rd(FSTS, 4)
    s.rd(FECTL, 4)
    s.dma("from_device", 0x7_0000, 8)
    s.faults()
    s.clear_fault()
    s.rd(FSTS, 4)
    s.rd(FECTL, 4)
    out.append(s)

    s = S("fault-event-unmasked",
          description="with FECTL.IM clear a fault sends the event and leaves IP clear")
    top = legacy_base(s)
    s.ss_map(top, 4, 0x6000, OUT)
    s.wr(FEDATA, 4, 0x40)
    s.wr(FEADDR, 4, 0xFEE00000)
    s.wr(FECTL, 4, 0)
    s.rd(FECTL, 4)
    legacy_enable(s)
    s.dma("to_device", 0x5000, 8)
    s.faults()
    s.clear_fault()
    s.rd(FSTS, 4)
    s.rd(FECTL, 4)
    out.append(s)

    s = S("fault-event-masked-then-unmasked",
          description="IP set while IM is set; clearing IM delivers the event and clears IP")
    top = legacy_base(s)
    s.wr(FEDATA, 4, 0x41)
    s.wr(FEADDR, 4, 0xFEE00000)
    legacy_enable(s)
    s.dma("to_device", 0x5000, 8)
    s.rd(FECTL, 4)
    s.wr(FECTL, 4, 0)
    s.rd(FECTL, 4)
    s.faults()
    out.append(s)


def scalable(out):
    # second stage in scalable mode
    def sm_ss_case(name, aw, leaf_level, iova_r, iova_w, desc):
        s = S(name, SM_SS, description=desc)
        top = sm_base(s, 2, did=2, aw=aw)
        levels = aw + 2
        if leaf_level == 1:
            s.ss_map(top, levels, iova_r, DATA)
            s.ss_map(top, levels, iova_w, OUT)
            src, dst = DATA + (iova_r & 0xFFF), OUT + (iova_w & 0xFFF)
        elif leaf_level == 2:
            base = iova_r & ~0x1FFFFF
            s.ss_map(top, levels, base, 0x2000000, 2)
            src, dst = 0x2000000 + iova_r - base, 0x2000000 + iova_w - base
        else:
            base = iova_r & ~0x3FFFFFFF
            s.ss_map(top, levels, base, 0, 3)
            src, dst = iova_r - base, iova_w - base
        s.pattern(src, 0x21, 4)
        s.fill(dst, 32, 0xEE)
        sm_enable(s)
        s.copy_check(iova_r, iova_w, dst, 32)
        s.rd(FSTS, 4)
        out.append(s)

    sm_ss_case("sm-ss-4level-4k", 2, 1, 0x5010, 0x12_3456_7000,
               "scalable mode, PASID entry PGTT=2 (second stage), 4-level, 4 KiB")
    sm_ss_case("sm-ss-3level-2m", 1, 2, 0x40_0030_0000, 0x40_0031_0000,
               "scalable mode second stage, 3-level (AW=1), 2 MiB leaf")
    sm_ss_case("sm-ss-4level-1g", 2, 3, 0x80_4140_0000, 0x80_4150_0040,
               "scalable mode second stage, 1 GiB leaf")

    s = S("sm-ss-write-read-only", SM_SS,
          description="scalable second-stage write to a read-only page: a fault is recorded "
                      "(FR masked: QEMU reports the legacy reason, DEVIATIONS.md)")
    top = sm_base(s, 2)
    s.ss_map(top, 4, 0x5000, OUT, perm=1)
    s.fill(OUT, 16, 0x5A)
    sm_enable(s)
    s.dma("from_device", 0x5000, 16)
    s.faults(scalable=True, fr=False)
    s.dump(OUT, 16)
    out.append(s)

    # pass-through
    for tag, props in (("sm", SM_SS), ("sm-flts", SM_FS)):
        s = S(f"{tag}-pass-through", props,
              description="PASID entry PGTT=4 (pass-through): IOVA = GPA")
        sm_base(s, 4, did=1)
        s.pattern(DATA + 0x80, 0x22, 2)
        s.fill(OUT + 0x80, 16, 0)
        sm_enable(s)
        s.copy_check(DATA + 0x80, OUT + 0x80, OUT + 0x80, 16)
        s.rd(FSTS, 4)
        out.append(s)

    # first stage
    def fs_case(name, leaf_level, iova_r, iova_w, desc, props=SM_FS):
        s = S(name, props, description=desc)
        top = sm_base(s, 1, did=5)
        if leaf_level == 1:
            s.fs_map(top, iova_r, DATA)
            s.fs_map(top, iova_w, OUT)
            src, dst = DATA + (iova_r & 0xFFF), OUT + (iova_w & 0xFFF)
        elif leaf_level == 2:
            base = iova_r & ~0x1FFFFF
            s.fs_map(top, base, 0x2000000, 2)
            src, dst = 0x2000000 + iova_r - base, 0x2000000 + iova_w - base
        else:
            base = iova_r & ~0x3FFFFFFF
            s.fs_map(top, base, 0, 3)
            src, dst = iova_r - base, iova_w - base
        s.pattern(src, 0x31, 4)
        s.fill(dst, 32, 0xEE)
        sm_enable(s)
        s.copy_check(iova_r, iova_w, dst, 32)
        s.rd(FSTS, 4)
        out.append(s)

    fs_case("sm-fs-4level-4k", 1, 0x7F_FFFF_F000, 0x1000,
            "scalable first stage (PGTT=1), 4-level, 4 KiB pages")
    fs_case("sm-fs-2m", 2, 0x1234_5660_0000 + 0x1_2340, 0x1234_5660_0000 + 0x4_0000,
            "scalable first stage, 2 MiB leaf (PS in the PDE)")
    fs_case("sm-fs-1g", 3, 0x3_4140_0000, 0x3_4150_0010,
            "scalable first stage, 1 GiB leaf (CAP.FL1GP)")
    fs_case("sm-fs-canonical-high", 1, 0xFFFF_8000_0000_5000, 0xFFFF_FFFF_FFFF_E000,
            "scalable first stage, canonical addresses with bit 47 set")

    s = S("sm-fs-accessed-dirty", SM_FS,
          description="first stage sets A at every level walked and D on a written leaf")
    top = sm_base(s, 1, did=5)
    leaf_r = s.fs_map(top, 0x4020_5000, DATA)
    leaf_w = s.fs_map(top, 0x4020_6000, OUT)
    pdpt = s.tables[top][0] & ~0xFFF
    pd = s.tables[pdpt][1] & ~0xFFF
    s.pattern(DATA, 0x32, 2)
    sm_enable(s)
    s.dma("to_device", 0x4020_5000, 16)
    s.dump(top, 8)
    s.dump(pdpt + 8, 8)
    s.dump(pd + 8 * 1, 8)
    s.dump(leaf_r, 8)
    s.dump(leaf_w, 8)
    s.dma("from_device", 0x4020_6000, 16)
    s.dump(leaf_r, 16)
    s.dump(OUT, 16)
    s.rd(FSTS, 4)
    out.append(s)

    def fs_fault(name, desc, build, direction="to_device", iova=0x5000, props=SM_FS):
        s = S(name, props, description=desc)
        top = sm_base(s, 1, did=5)
        s.pattern(DATA, 0x33, 2)
        s.fill(OUT, 16, 0x5A)
        build(s, top)
        sm_enable(s)
        s.dma(direction, iova, 16)
        s.faults(scalable=True)
        if direction == "from_device":
            s.dump(OUT, 16)
        out.append(s)

    fs_fault("sm-fs-fault-not-present", "first-stage PTE not present: FR 0x71",
             lambda s, t: s.fs_map(t, 0x6000, DATA))
    fs_fault("sm-fs-fault-user-supervisor", "first-stage leaf with U/S=0: FR 0x81",
             lambda s, t: s.fs_map(t, 0x5000, DATA, flags=0x3))
    fs_fault("sm-fs-fault-user-supervisor-nonleaf", "first-stage non-leaf entries with U/S=0: FR 0x81",
             lambda s, t: s.fs_map(t, 0x5000, DATA, nonleaf=0x3))
    fs_fault("sm-fs-fault-write-read-only",
             "first-stage write to a read-only page (first access): FR 0x85, RAM unchanged",
             lambda s, t: s.fs_map(t, 0x5000, OUT, flags=0x5), direction="from_device")
    fs_fault("sm-fs-fault-non-canonical", "non-canonical first-stage input: FR 0x80",
             lambda s, t: s.fs_map(t, 0x5000, DATA), iova=0x0000_8000_0000_5000)
    fs_fault("sm-fs-fault-non-canonical-high",
             "upper bits set without bit 47: non-canonical, FR 0x80",
             lambda s, t: s.fs_map(t, 0x5000, DATA), iova=0xFFFF_0000_0000_5000)
    fs_fault("sm-fs-fault-reserved-leaf",
             "first-stage leaf with an address bit above the host width: FR 0x72",
             lambda s, t: s.fs_map(t, 0x5000, DATA | (1 << 50)))

    def ps_pml4(s, t):
        s.fs_map(t, 0x5000, DATA)
        s.entry(t, 0, s.tables[t][0] | (1 << 7))
    fs_fault("sm-fs-fault-pml4e-ps", "first-stage PML4E with PS set: FR 0x72", ps_pml4)

    def rsvd_2m(s, t):
        s.fs_map(t, 0x0, 0x2000000 | (1 << 14), leaf_level=2)
    fs_fault("sm-fs-fault-2m-reserved", "first-stage 2 MiB leaf with bit 14 set: FR 0x72",
             rsvd_2m)

    # PASID directory / entry
    def pasid_fault(name, desc, build, props=SM_FS, fr=True):
        s = S(name, props, description=desc)
        s.pattern(DATA, 0x34, 2)
        build(s)
        sm_enable(s)
        s.dma("to_device", 0x5000, 16)
        s.faults(scalable=True, fr=fr)
        out.append(s)

    def pdir_np(s):
        s.sm_context(ROOT, CTX, PDIR)
    pasid_fault("sm-fault-pasid-dir-not-present", "PASID directory entry not present: FR 0x51",
                pdir_np)

    def pe_np(s):
        top = s.page()
        s.fs_map(top, 0x5000, DATA)
        s.sm_context(ROOT, CTX, PDIR)
        s.pasid_dir_entry(PDIR, 0, PTABLE)
        s.pasid_entry(PTABLE, 0, 1, 5, fsptptr=top, present=0)
    pasid_fault("sm-fault-pasid-entry-not-present",
                "PASID entry with P=0 (other fields valid): FR 0x59", pe_np)

    def pe_nested(s):
        s.sm_context(ROOT, CTX, PDIR)
        s.pasid_dir_entry(PDIR, 0, PTABLE)
        s.pasid_entry(PTABLE, 0, 3, 5)
    pasid_fault("sm-fault-pasid-entry-pgtt-nested",
                "PASID entry PGTT=3 (nested) without ECAP.NEST: FR 0x5b", pe_nested)

    def pe_fs_on_ss(s):
        top = s.page()
        s.fs_map(top, 0x5000, DATA)
        s.sm_context(ROOT, CTX, PDIR)
        s.pasid_dir_entry(PDIR, 0, PTABLE)
        s.pasid_entry(PTABLE, 0, 1, 5, fsptptr=top)
    pasid_fault("sm-fault-pasid-entry-pgtt-fs-unsupported",
                "PASID entry PGTT=1 on a unit without ECAP.FLTS: FR 0x5b", pe_fs_on_ss,
                props=SM_SS)

    def pe_ss_on_fs(s):
        top = s.page()
        s.ss_map(top, 4, 0x5000, DATA)
        s.sm_context(ROOT, CTX, PDIR)
        s.pasid_dir_entry(PDIR, 0, PTABLE)
        s.pasid_entry(PTABLE, 0, 2, 5, ssptptr=top)
    pasid_fault("sm-fault-pasid-entry-pgtt-ss-unsupported",
                "PASID entry PGTT=2 on a unit without ECAP.SLTS: FR 0x5b", pe_ss_on_fs)

    def pe_pt_nopt(s):
        s.sm_context(ROOT, CTX, PDIR)
        s.pasid_dir_entry(PDIR, 0, PTABLE)
        s.pasid_entry(PTABLE, 0, 4, 1)
    pasid_fault("sm-fault-pasid-entry-pt-unsupported",
                "PASID entry PGTT=4 on a unit without ECAP.PT: FR 0x5b", pe_pt_nopt,
                props="x-scalable-mode=on,x-flts=on,fs1gp=off,pt=off")

    def pe_fsptptr(s):
        s.sm_context(ROOT, CTX, PDIR)
        s.pasid_dir_entry(PDIR, 0, PTABLE)
        s.pasid_entry(PTABLE, 0, 1, 5, fsptptr=0x10_0000_0000)
    pasid_fault("sm-fault-fsptptr-outside-memory",
                "FSPTPTR pointing outside guest memory: FR 0x73", pe_fsptptr)

    def ctx_np(s):
        s.w64(ROOT, CTX | 1, 0)
    pasid_fault("sm-fault-context-not-present",
                "scalable context entry not present: a fault without PASID is recorded "
                "(FR masked, DEVIATIONS.md)", ctx_np, fr=False)

    def root_np(s):
        pass
    pasid_fault("sm-fault-root-not-present",
                "scalable root entry not present: a fault without PASID is recorded "
                "(FR masked, DEVIATIONS.md)", root_np, fr=False)

    # FPD in scalable mode
    s = S("sm-fpd-pasid-entry", SM_FS,
          description="FPD=1 in a present PASID entry suppresses first-stage faults")
    top = s.page()
    s.fs_map(top, 0x6000, DATA)
    s.sm_context(ROOT, CTX, PDIR)
    s.pasid_dir_entry(PDIR, 0, PTABLE)
    s.pasid_entry(PTABLE, 0, 1, 5, fsptptr=top, fpd=1)
    sm_enable(s)
    s.dma("to_device", 0x5000, 16)
    s.no_fault()
    s.dma("to_device", 0x8000_0000_0000, 16)
    s.no_fault()
    out.append(s)

    s = S("sm-fpd-context", SM_FS,
          description="FPD=1 in the scalable context entry suppresses PASID-table and walk faults")
    top = s.page()
    s.fs_map(top, 0x6000, DATA)
    s.sm_context(ROOT, CTX, PDIR, fpd=1)
    s.pasid_dir_entry(PDIR, 0, PTABLE)
    s.pasid_entry(PTABLE, 0, 1, 5, fsptptr=top)
    s.qi_on(IQ, dw=1)
    sm_enable(s)
    s.dma("to_device", 0x5000, 16)
    s.no_fault()
    s.sm_context(ROOT, CTX, PDIR, fpd=1, present=0)
    s.qi_submit([cc_desc("global") + [0, 0], pc_desc("global", 0), iotlb_desc("global") + [0, 0]])
    s.dma("to_device", 0x6000, 16)
    s.no_fault()
    out.append(s)


def remap_test(s, invalidate, top, levels, map_fn, src_a, src_b, iova=0x5000, out_iova=0x9000):
    """Maps iova -> A, reads it, remaps iova -> B, invalidates, reads, writes to OUT."""
    leaf = map_fn(top, levels, iova, src_a)
    map_fn(top, levels, out_iova, OUT)
    s.pattern(src_a, 0x41, 2)
    s.pattern(src_b, 0x42, 2)
    s.fill(OUT, 16, 0)
    return leaf


def invalidation(out):
    # ---- register-based, legacy ----
    def reg_case(name, desc, inv, props=""):
        s = S(name, props, description=desc)
        top = legacy_base(s, did=7)
        leaf = s.ss_map(top, 4, 0x5000, DATA)
        s.ss_map(top, 4, 0x9000, OUT)
        s.pattern(DATA, 0x41, 2)
        s.pattern(DATA + 0x1000, 0x42, 2)
        s.fill(OUT, 16, 0)
        legacy_enable(s)
        s.dma("to_device", 0x5000, 16)
        s.w64(leaf, (DATA + 0x1000) | 3)
        inv(s)
        s.copy_check(0x5000, 0x9000, OUT, 16)
        s.rd(FSTS, 4)
        out.append(s)

    reg_case("reg-inv-iotlb-global", "register-based global IOTLB invalidation after a PTE change",
             lambda s: s.iotlb_reg("global"))
    reg_case("reg-inv-iotlb-domain", "register-based domain-selective IOTLB invalidation",
             lambda s: s.iotlb_reg("domain", did=7))
    reg_case("reg-inv-iotlb-page", "register-based page-selective IOTLB invalidation (AM=0)",
             lambda s: s.iotlb_reg("page", did=7, addr=0x5000))
    reg_case("reg-inv-iotlb-page-ih", "page-selective invalidation with IH=1 after a leaf change",
             lambda s: s.iotlb_reg("page", did=7, addr=0x5000, ih=1))

    s = S("reg-inv-iotlb-page-am", description="page-selective invalidation with AM=2 covers 4 pages")
    top = legacy_base(s, did=7)
    leaves = [s.ss_map(top, 4, 0x4000 + i * 0x1000, DATA + i * 0x1000) for i in range(4)]
    s.ss_map(top, 4, 0x9000, OUT)
    for i in range(4):
        s.pattern(DATA + i * 0x1000, 0x50 + i, 1)
        s.pattern(DATA + 0x8000 + i * 0x1000, 0x58 + i, 1)
    s.fill(OUT, 64, 0)
    legacy_enable(s)
    for i in range(4):
        s.dma("to_device", 0x4000 + i * 0x1000, 8, i * 8)
    for i in range(4):
        s.w64(leaves[i], (DATA + 0x8000 + i * 0x1000) | 3)
    s.iotlb_reg("page", did=7, addr=0x4000, am=2)
    for i in range(4):
        s.dma("to_device", 0x4000 + i * 0x1000, 8, i * 8)
    s.dma("from_device", 0x9000, 32)
    s.dump(OUT, 32)
    s.rd(FSTS, 4)
    out.append(s)

    def ctx_case(name, desc, cc, iotlb, use_qi=False, props=""):
        s = S(name, props, description=desc)
        top_a = s.page()
        top_b = s.page()
        s.ss_map(top_a, 4, 0x5000, DATA)
        s.ss_map(top_a, 4, 0x9000, OUT)
        s.ss_map(top_b, 4, 0x5000, DATA + 0x1000)
        s.ss_map(top_b, 4, 0x9000, OUT)
        s.legacy_context(ROOT, CTX, top_a, did=9)
        s.pattern(DATA, 0x61, 2)
        s.pattern(DATA + 0x1000, 0x62, 2)
        s.fill(OUT, 16, 0)
        if use_qi:
            s.qi_on(IQ)
        legacy_enable(s)
        s.dma("to_device", 0x5000, 16)
        s.legacy_context(ROOT, CTX, top_b, did=9)
        if use_qi:
            s.qi_submit([cc, iotlb])
        else:
            cc(s)
            iotlb(s)
        s.copy_check(0x5000, 0x9000, OUT, 16)
        s.rd(FSTS, 4)
        out.append(s)

    ctx_case("reg-inv-context-global", "context entry change + global context-cache invalidation",
             lambda s: s.cc_reg("global"), lambda s: s.iotlb_reg("global"))
    ctx_case("reg-inv-context-domain",
             "context entry change + domain-selective context-cache and IOTLB invalidation",
             lambda s: s.cc_reg("domain", did=9), lambda s: s.iotlb_reg("domain", did=9))
    ctx_case("reg-inv-context-device",
             "context entry change + device-selective context-cache invalidation (FM=0)",
             lambda s: s.cc_reg("device", did=9, sid=EDU_SID), lambda s: s.iotlb_reg("domain", did=9))
    ctx_case("reg-inv-context-device-fm",
             "device-selective context-cache invalidation with FM=3 (function bits masked)",
             lambda s: s.cc_reg("device", did=9, sid=EDU_SID | 0x5, fm=3),
             lambda s: s.iotlb_reg("global"))

    # ---- queued, legacy (128-bit descriptors) ----
    ctx_case("qi-context-global", "queued: global context-cache + global IOTLB",
             cc_desc("global"), iotlb_desc("global"), use_qi=True)
    ctx_case("qi-context-domain", "queued: domain-selective context-cache + IOTLB",
             cc_desc("domain", did=9), iotlb_desc("domain", did=9), use_qi=True)
    ctx_case("qi-context-device", "queued: device-selective context-cache (FM=0) + domain IOTLB",
             cc_desc("device", did=9, sid=EDU_SID), iotlb_desc("domain", did=9), use_qi=True)

    def qi_pte_case(name, desc, descs, props=""):
        s = S(name, props, description=desc)
        top = legacy_base(s, did=7)
        leaf = s.ss_map(top, 4, 0x5000, DATA)
        s.ss_map(top, 4, 0x9000, OUT)
        s.pattern(DATA, 0x71, 2)
        s.pattern(DATA + 0x1000, 0x72, 2)
        s.fill(OUT, 16, 0)
        s.qi_on(IQ)
        legacy_enable(s)
        s.dma("to_device", 0x5000, 16)
        s.w64(leaf, (DATA + 0x1000) | 3)
        s.qi_submit(descs)
        s.copy_check(0x5000, 0x9000, OUT, 16)
        s.rd(IQH, 8)
        s.rd(FSTS, 4)
        out.append(s)

    qi_pte_case("qi-iotlb-global", "queued global IOTLB invalidation", [iotlb_desc("global")])
    qi_pte_case("qi-iotlb-domain", "queued domain-selective IOTLB invalidation (DR, DW set)",
                [iotlb_desc("domain", did=7, dr=1, dw=1)])
    qi_pte_case("qi-iotlb-page", "queued page-selective IOTLB invalidation",
                [iotlb_desc("page", did=7, addr=0x5000)])
    qi_pte_case("qi-iotlb-page-am", "queued page-selective IOTLB invalidation, AM=4 around the page",
                [iotlb_desc("page", did=7, addr=0x0, am=4)])
    qi_pte_case("qi-devtlb-iec", "device-TLB and IEC descriptors complete in order with the IOTLB one",
                [iotlb_desc("page", did=7, addr=0x5000), devtlb_desc(EDU_SID, 0x5000),
                 iec_desc(), iec_desc(index=3, im=1)], props="device-iotlb=on,intremap=on")

    # ---- queued, scalable (256-bit descriptors) ----
    def sm_fs_inv(name, desc, descs_fn, props=SM_FS):
        s = S(name, props, description=desc)
        top = sm_base(s, 1, did=5)
        leaf = s.fs_map(top, 0x5000, DATA)
        s.fs_map(top, 0x9000, OUT)
        s.pattern(DATA, 0x81, 2)
        s.pattern(DATA + 0x1000, 0x82, 2)
        s.fill(OUT, 16, 0)
        s.qi_on(IQ, dw=1)
        sm_enable(s)
        s.dma("to_device", 0x5000, 16)
        s.w64(leaf, (DATA + 0x1000) | 0x7)
        s.qi_submit(descs_fn())
        s.copy_check(0x5000, 0x9000, OUT, 16)
        s.rd(IQH, 8)
        s.rd(FSTS, 4)
        out.append(s)

    sm_fs_inv("qi-sm-piotlb-page", "PASID-IOTLB page-selective (G=3, IH=1) after a first-stage leaf change",
              lambda: [piotlb_desc("page", 5, 0, addr=0x5000, ih=1)])
    sm_fs_inv("qi-sm-piotlb-pasid", "PASID-IOTLB all-in-PASID (G=2) after a first-stage leaf change",
              lambda: [piotlb_desc("pasid", 5, 0)])
    sm_fs_inv("qi-sm-pasid-devtlb",
              "PASID-IOTLB page + PASID-based device-TLB descriptors (device-iotlb=on)",
              lambda: [piotlb_desc("page", 5, 0, addr=0x5000),
                       pasid_devtlb_desc(EDU_SID, 0, addr=0x5000)],
              props=SM_FS + ",device-iotlb=on")
    sm_fs_inv("qi-sm-iotlb-global", "IOTLB global descriptor in a 256-bit queue flushes first-stage entries",
              lambda: [iotlb_desc("global") + [0, 0]])
    sm_fs_inv("qi-sm-iotlb-domain", "IOTLB domain descriptor in a 256-bit queue flushes first-stage entries",
              lambda: [iotlb_desc("domain", did=5) + [0, 0]])

    s = S("qi-sm-ss-iotlb-page", SM_SS,
          description="scalable second stage: IOTLB page-selective descriptor in a 256-bit queue")
    top = sm_base(s, 2, did=6)
    leaf = s.ss_map(top, 4, 0x5000, DATA)
    s.ss_map(top, 4, 0x9000, OUT)
    s.pattern(DATA, 0x91, 2)
    s.pattern(DATA + 0x1000, 0x92, 2)
    s.fill(OUT, 16, 0)
    s.qi_on(IQ, dw=1)
    sm_enable(s)
    s.dma("to_device", 0x5000, 16)
    s.w64(leaf, (DATA + 0x1000) | 3)
    s.qi_submit([iotlb_desc("page", did=6, addr=0x5000) + [0, 0]])
    s.copy_check(0x5000, 0x9000, OUT, 16)
    s.rd(FSTS, 4)
    out.append(s)

    s = S("qi-sm-pasid-entry-change", SM_FS,
          description="new FSPTPTR in the PASID entry: PASID-cache + PASID-IOTLB invalidation")
    top_a = sm_base(s, 1, did=5)
    top_b = s.page()
    s.fs_map(top_a, 0x5000, DATA)
    s.fs_map(top_a, 0x9000, OUT)
    s.fs_map(top_b, 0x5000, DATA + 0x1000)
    s.fs_map(top_b, 0x9000, OUT)
    s.pattern(DATA, 0xA1, 2)
    s.pattern(DATA + 0x1000, 0xA2, 2)
    s.fill(OUT, 16, 0)
    s.qi_on(IQ, dw=1)
    sm_enable(s)
    s.dma("to_device", 0x5000, 16)
    s.pasid_entry(PTABLE, 0, 1, 5, fsptptr=top_b)
    s.qi_submit([pc_desc("pasid", 5, 0), piotlb_desc("pasid", 5, 0)])
    s.copy_check(0x5000, 0x9000, OUT, 16)
    s.rd(FSTS, 4)
    out.append(s)

    s = S("qi-sm-context-change", SM_FS,
          description="scalable context entry moved to a new PASID directory: "
                      "context-cache + PASID-cache + PASID-IOTLB invalidation")
    top_a = sm_base(s, 1, did=5)
    top_b = s.page()
    s.fs_map(top_a, 0x5000, DATA)
    s.fs_map(top_a, 0x9000, OUT)
    s.fs_map(top_b, 0x5000, DATA + 0x1000)
    s.fs_map(top_b, 0x9000, OUT)
    pdir_b, ptable_b = 0x1006000, 0x1007000
    s.pasid_dir_entry(pdir_b, 0, ptable_b)
    s.pasid_entry(ptable_b, 0, 1, 8, fsptptr=top_b)
    s.pattern(DATA, 0xB1, 2)
    s.pattern(DATA + 0x1000, 0xB2, 2)
    s.fill(OUT, 16, 0)
    s.qi_on(IQ, dw=1)
    sm_enable(s)
    s.dma("to_device", 0x5000, 16)
    s.sm_context(ROOT, CTX, pdir_b)
    s.qi_submit([cc_desc("device", did=5, sid=EDU_SID) + [0, 0], pc_desc("domain", 5),
                 piotlb_desc("pasid", 5, 0)])
    s.copy_check(0x5000, 0x9000, OUT, 16)
    s.rd(FSTS, 4)
    out.append(s)

    # ---- wait descriptors ----
    for tag, dw, props in (("128", 0, ""), ("256", 1, SM_FS)):
        s = S(f"qi-wait-status-write-{tag}", props,
              description=f"wait descriptors with SW write their status data ({tag}-bit queue); "
                          "a later IF wait orders them")
        s.fill(STATUS, 16, 0xFF)
        s.qi_on(IQ, dw=dw)
        s.qi_submit([wait_desc(sw=True, data=0x1234_5678, addr=STATUS),
                     wait_desc(sw=True, data=0x9ABC_DEF0, addr=STATUS + 8, fn=1)])
        s.dump(STATUS, 16)
        s.rd(IQH, 8)
        s.rd(ICS, 4)
        s.rd(FSTS, 4)
        out.append(s)

    s = S("qi-wait-interrupt", description="wait with IF: ICS.IWC, IECTL.IP while masked, "
                                           "IP cleared with IWC, event on unmask")
    s.qi_on(IQ)
    s.wr(IEDATA, 4, 0x42)
    s.wr(IEADDR, 4, 0xFEE00000)
    s.qi_write([wait_desc(irq=True)])
    s.qi_tail()
    s.poll(ICS, 4, ICS_IWC, ICS_IWC)
    s.rd(ICS, 4)
    s.rd(IECTL, 4)
    s.wr(ICS, 4, ICS_IWC)
    s.rd(ICS, 4)
    s.rd(IECTL, 4)
    s.qi_write([wait_desc(irq=True)])
    s.qi_tail()
    s.poll(ICS, 4, ICS_IWC, ICS_IWC)
    s.rd(IECTL, 4)
    s.wr(IECTL, 4, 0)
    s.rd(IECTL, 4)
    s.wr(ICS, 4, ICS_IWC)
    s.qi_write([wait_desc(irq=True)])
    s.qi_tail()
    s.poll(ICS, 4, ICS_IWC, ICS_IWC)
    s.rd(IECTL, 4)
    s.rd(IQH, 8)
    out.append(s)

    # ---- invalidation queue errors ----
    s = S("qi-iqe-invalid-type",
          description="an invalid descriptor type sets FSTS.IQE with IQH on it; "
                      "after replacing it and clearing IQE the queue resumes on the next tail write")
    s.fill(STATUS, 8, 0)
    s.qi_on(IQ)
    s.qi_write([iotlb_desc("global"), [0xF, 0], wait_desc(sw=True, data=0x55, addr=STATUS)])
    s.qi_tail()
    s.poll(FSTS, 4, FSTS_IQE, FSTS_IQE)
    s.rd(FSTS, 4)
    s.rd(IQH, 8)
    s.rd(FECTL, 4)
    s.w64(IQ + 16, *wait_desc(sw=True, data=0x66, addr=STATUS + 4))
    s.wr(FSTS, 4, FSTS_IQE)
    s.rd(FSTS, 4)
    s.qi_write([wait_desc(irq=True)])
    s.qi_tail()
    s.poll(ICS, 4, ICS_IWC, ICS_IWC)
    s.dump(STATUS, 8)
    s.rd(IQH, 8)
    out.append(s)

    s = S("qi-iqe-256-tail-bit4", SM_FS,
          description="256-bit queue: a tail with bit 4 set is an invalidation queue error")
    s.qi_on(IQ, dw=1)
    s.qi_write([wait_desc(irq=True)])
    s.wr(IQT, 8, 0x10)
    s.poll(FSTS, 4, FSTS_IQE, FSTS_IQE)
    s.rd(FSTS, 4)
    s.rd(IQH, 8)
    s.wr(FSTS, 4, FSTS_IQE)
    s.qi_tail()
    s.poll(ICS, 4, ICS_IWC, ICS_IWC)
    s.rd(IQH, 8)
    s.rd(FSTS, 4)
    out.append(s)

    s = S("qi-iqe-pasid-desc-in-128", SM_FS,
          description="a PASID-IOTLB descriptor in a 128-bit queue is an invalidation queue error")
    s.qi_on(IQ, dw=0)
    s.qi_write([piotlb_desc("pasid", 5, 0)[:2]])
    s.qi_tail()
    s.poll(FSTS, 4, FSTS_IQE, FSTS_IQE)
    s.rd(FSTS, 4)
    s.rd(IQH, 8)
    out.append(s)


def build():
    out = []
    identity(out)
    memory_top(out)
    registers(out)
    legacy_translation(out)
    legacy_faults(out)
    scalable(out)
    invalidation(out)
    names = [s.name for s in out]
    assert not any(n.startswith(HAND_WRITTEN_PREFIX) for n in names), "reserved prefix"
    assert len(names) == len(set(names)), "duplicate scenario names"
    return out


# Hand-written format examples (conformance/README.md): not generated, never removed.
HAND_WRITTEN_PREFIX = "example-"


def generated(f):
    return f.endswith(".json") and not f.startswith(HAND_WRITTEN_PREFIX)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    corpus = os.path.join(os.path.dirname(here), "scenarios")
    check = "--check" in sys.argv[1:]
    scenarios = build()
    wanted = {}
    for s in scenarios:
        wanted[s.name + ".json"] = json.dumps(s.json(), indent=1) + "\n"
    stale = []
    if not check:
        os.makedirs(corpus, exist_ok=True)
        for f in os.listdir(corpus):
            if generated(f) and f not in wanted:
                os.remove(os.path.join(corpus, f))
    for f, text in wanted.items():
        path = os.path.join(corpus, f)
        old = open(path).read() if os.path.exists(path) else None
        if old != text:
            stale.append(f)
            if not check:
                with open(path, "w") as fh:
                    fh.write(text)
    if check:
        extra = [f for f in os.listdir(corpus) if generated(f) and f not in wanted]
        if stale or extra:
            print("stale:", " ".join(stale + extra))
            sys.exit(1)
    print(f"{len(scenarios)} scenarios ({len(stale)} written)" if not check else "up to date")


if __name__ == "__main__":
    main()
