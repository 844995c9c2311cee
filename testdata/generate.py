#!/usr/bin/env python3
"""Deterministic DICOM test data for dicom-gateway.

Subcommands:

  fixtures OUT_DIR [--long-uids]
      Small Part-10 fixtures that are committed to git, plus OUT_DIR/fixtures.json
      describing each file (transfer syntax, UIDs, DCMTK storescu flags that make
      storescu propose that transfer syntax).  Output is byte-for-byte identical
      across runs: fixed UIDs, fixed dates, pixel data derived from fixed seeds
      (files compressed by DCMTK: given the same DCMTK version).

  bench OUT_DIR --set ct512|small9|mf100 [--count N] [--run-id N]
      Benchmark studies (not committed).  One dataset template is built once;
      per instance only UIDs and numbers change, and Pixel Data is appended as
      raw bytes, so 1000 x 512 KiB takes seconds.

  big OUT_FILE --size-mib N [--long-uids]
      One multi-frame instance with N MiB of Pixel Data, streamed to disk in
      8 MiB chunks (the generator never holds the whole object in memory).

  --long-uids makes every UID 64 characters long (the same data otherwise):
  the S3 tests use it, so that object keys have a real modality's length.

Needs Python 3.11, pydicom 3, numpy and, for `fixtures`, DCMTK 3.6.7 in
/usr/bin (dcmcjpeg, dcmcjpls, dcmcrle) for real JPEG / JPEG-LS / RLE data.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import (
    HEVCMP51,
    MPEG4HP41,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

# Made-up organisation root; every UID in the generated data lives under it.
UID_ROOT = "1.2.826.0.1.3680043.10.1234."
IMPLEMENTATION_CLASS_UID = UID_ROOT + "0.1"
IMPLEMENTATION_VERSION_NAME = "DCMGW_TESTGEN_1"

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SECONDARY_CAPTURE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
MF_GRAYSCALE_WORD_SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7.3"
VIDEO_PHOTOGRAPHIC_STORAGE = "1.2.840.10008.5.1.4.1.1.77.1.4.1"
BASIC_TEXT_SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.11"

DCMCJPEG = "/usr/bin/dcmcjpeg"
DCMCJPLS = "/usr/bin/dcmcjpls"
DCMCRLE = "/usr/bin/dcmcrle"

# storescu (DCMTK 3.6.7) options that make it send a file in its own transfer
# syntax (checked against a bit-preserving storescp).  Without -xi storescu
# converts implicit VR files to explicit VR.  The video SOP class needs -R:
# without it storescu proposes its 128 default contexts and the Video
# Photographic one is cut off.  None: storescu cannot propose the syntax
# (HTJ2K is unknown to DCMTK 3.6.7); send those with tests/peers/pynet.py.
STORESCU_FLAGS: dict[str, list[str] | None] = {
    ImplicitVRLittleEndian: ["-xi"],
    ExplicitVRLittleEndian: ["-xe"],
    ExplicitVRBigEndian: ["-xb"],
    DeflatedExplicitVRLittleEndian: ["-xd"],
    JPEGBaseline8Bit: ["-xy"],
    JPEGLosslessSV1: ["-xs"],
    JPEGLSLossless: ["-xt"],
    JPEG2000Lossless: ["-xv"],
    HTJ2KLossless: None,
    RLELossless: ["-xr"],
    MPEG4HP41: ["-xn", "-R"],
    HEVCMP51: ["-x4", "-R"],
}

CHUNK = 8 * 1024 * 1024  # streaming write size for large Pixel Data


# When set (`--long-uids`), every generated UID is lengthened to this many
# characters. Real modalities use long UIDs (55-64 characters are common), and
# object keys built from three of them pass 200 bytes: stores that choke on
# long keys are found only with such data.
UID_LENGTH: int | None = None


def uid(*parts: int) -> str:
    short = UID_ROOT + ".".join(str(p) for p in parts)
    return lengthen_uid(short, UID_LENGTH) if UID_LENGTH else short


def lengthen_uid(short: str, length: int) -> str:
    """`short` plus one component of digits derived from it, `length`
    characters in all (a component never starts with 0, so the result is a
    valid UID; different inputs give different outputs in practice)."""
    room = length - len(short) - 1
    if room < 1:
        return short
    digits = str(int.from_bytes(hashlib.sha256(short.encode()).digest(), "big"))
    return f"{short}.{digits[:room]}"


def noise(seed: str, count: int, spread: int) -> np.ndarray:
    """`count` deterministic integers in [-spread, spread].

    SHAKE-256 is used instead of a numpy RNG because its output is fixed by
    the algorithm, not by the numpy version, so committed fixtures stay stable.
    """
    raw = np.frombuffer(hashlib.shake_256(seed.encode()).digest(count * 2), "<u2")
    return raw.astype(np.int32) % (2 * spread + 1) - spread


def ct_phantom(size: int, slice_index: int) -> np.ndarray:
    """A body-like ellipse with a bone ring and a slice-dependent lesion.

    Stored values are HU + 1024 in 12 bits (RescaleIntercept -1024).
    """
    coords = (np.arange(size) + 0.5) / size * 2 - 1
    y, x = np.meshgrid(coords, coords, indexing="ij")
    hu = np.full((size, size), -1000, np.int32)
    body = (x / 0.85) ** 2 + (y / 0.7) ** 2
    hu[body <= 1] = 40
    hu[(body <= 0.8) & (body > 0.65)] = 700
    lesion = (x - 0.2 * np.cos(slice_index)) ** 2 + (y + 0.1 * slice_index / 4) ** 2
    hu[lesion <= 0.02] = 120
    hu += noise(f"ct-{size}-{slice_index}", size * size, 8).reshape(size, size)
    return np.clip(hu + 1024, 0, 4095).astype(np.uint16)


def file_meta(sop_class: str, sop_instance: str, transfer_syntax: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    return meta


def base_dataset(
    sop_class: str,
    sop_instance: str,
    transfer_syntax: str,
    *,
    patient: tuple[str, str],
    study_uid: str,
    study_description: str,
    accession: str,
    series_uid: str,
    series_number: int,
    series_description: str,
    modality: str,
    instance_number: int,
) -> Dataset:
    """Patient, study, series, equipment and SOP common modules."""
    ds = Dataset()
    ds.file_meta = file_meta(sop_class, sop_instance, transfer_syntax)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    ds.StudyDate = "20240115"
    ds.SeriesDate = "20240115"
    ds.ContentDate = "20240115"
    ds.StudyTime = "101500"
    ds.SeriesTime = "101700"
    ds.ContentTime = "101730"
    ds.AccessionNumber = accession
    ds.Modality = modality
    ds.Manufacturer = "dicom-gateway testdata"
    ds.InstitutionName = "Gateway Test Hospital"
    ds.ReferringPhysicianName = "Referring^Doctor"
    ds.StudyDescription = study_description
    ds.SeriesDescription = series_description
    ds.PatientName, ds.PatientID = patient
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.PatientSize = "1.70"
    ds.PatientWeight = "65"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    return ds


def set_image_pixel_module(ds: Dataset, rows: int, columns: int, bits_stored: int) -> None:
    """Grayscale Image Pixel module; 8 or 16 bits allocated, unsigned."""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 8 if bits_stored <= 8 else 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0


def set_ct_image_module(ds: Dataset, size: int, slice_index: int, frame_of_reference: str) -> None:
    """CT Image, Image Plane and Image Pixel modules (without Pixel Data)."""
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.AcquisitionNumber = 1
    ds.FrameOfReferenceUID = frame_of_reference
    ds.PositionReferenceIndicator = ""
    ds.PixelSpacing = [f"{320 / size:.4f}"] * 2
    ds.SliceThickness = "5"
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = ["-160", "-160", f"{-5 * slice_index}"]
    ds.SliceLocation = f"{-5 * slice_index}"
    ds.KVP = "120"
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    set_image_pixel_module(ds, size, size, 12)


def set_native_pixel_data(ds: Dataset, pixels: np.ndarray) -> None:
    """Native Pixel Data in the byte order of the dataset's transfer syntax."""
    big_endian = ds.file_meta.TransferSyntaxUID == ExplicitVRBigEndian
    dtype = pixels.dtype.newbyteorder(">" if big_endian else "<")
    ds.PixelData = pixels.astype(dtype).tobytes()
    ds["PixelData"].VR = "OB" if pixels.dtype.itemsize == 1 else "OW"


def set_encapsulated_pixel_data(ds: Dataset, fragments: list[bytes], basic_offset_table: bool) -> None:
    """Encapsulated Pixel Data, one fragment per item (padded to even length)."""
    fragments = [f + b"\x00" * (len(f) % 2) for f in fragments]
    ds.PixelData = encapsulate(fragments, has_bot=basic_offset_table)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True


def write(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    dcmwrite(path, ds, enforce_file_format=True)
    return path


# --------------------------------------------------------------------------
# Synthetic compressed bitstreams for codecs DCMTK 3.6.7 cannot encode.


def uniform_j2k_codestream(size: int, bits: int, high_throughput: bool) -> bytes:
    """A complete, decodable JPEG 2000 codestream of a uniform image.

    Reversible 5/3 transform, zero decomposition levels, one tile, one layer.
    Every pixel equals 2**(bits-1): after the DC level shift all coefficients
    are zero, so the single packet is empty and no code-block needs entropy
    coding.  That is what makes writing it by hand feasible; with
    `high_throughput` the same image is declared as HTJ2K (ITU-T T.814):
    Rsiz/CAP advertise Part 15 and the code-block style selects the HT coder.
    """
    rsiz = 0x4000 if high_throughput else 0  # bit 14: HTJ2K, see CAP
    extent_and_offset = (size, size, 0, 0) * 2  # of the image, then of the one tile
    component = (bits - 1, 1, 1)  # unsigned precision, no subsampling
    siz = struct.pack(">HIIIIIIIIHBBB", rsiz, *extent_and_offset, 1, *component)
    # CAP: Pcap bit 15 (Part 15); Ccap15 0 = HTONLY, single HT set, reversible.
    cap = struct.pack(">IH", 1 << (32 - 15), 0)
    scod = 0  # default precincts, no SOP/EPH markers
    progression = (0, 1, 0)  # LRCP, one layer, no multi-component transform
    block_style = 0x40 if high_throughput else 0  # 0x40: HT block coder
    coding = (0, 4, 4, block_style, 1)  # no decomposition, 64x64 code-blocks, reversible 5/3
    cod = struct.pack(">BBHBBBBBB", scod, *progression, *coding)
    qcd = struct.pack(">BB", 2 << 5, bits << 3)  # no quantisation, 2 guard bits
    packet = b"\x00"  # empty packet: zero-length packet header bit
    tile_part_length = 12 + 2 + len(packet)  # SOT segment + SOD marker + data
    sot = struct.pack(">HIBB", 0, tile_part_length, 0, 1)

    def segment(marker: int, body: bytes) -> bytes:
        return struct.pack(">HH", marker, len(body) + 2) + body

    return b"".join(
        [
            b"\xff\x4f",  # SOC
            segment(0xFF51, siz),
            segment(0xFF50, cap) if high_throughput else b"",
            segment(0xFF52, cod),
            segment(0xFF5C, qcd),
            segment(0xFF90, sot),
            b"\xff\x93",  # SOD
            packet,
            b"\xff\xd9",  # EOC
        ]
    )


def fake_video_stream(codec: str, length: int) -> bytes:
    """Annex-B style NAL units with plausible headers and filler payload.

    Not decodable; the gateway stores encapsulated pixel data without
    decoding it, so only the container structure matters.
    """
    start = b"\x00\x00\x00\x01"
    if codec == "h264":
        # SPS (profile_idc 100 = High, level_idc 41), PPS, IDR slice.
        headers = [b"\x67\x64\x00\x29\xac\x2b\x40\x50\x1e\xd0", b"\x68\xee\x3c\x80", b"\x65\x88\x84"]
    else:
        # VPS, SPS, PPS (Main profile, level 5.1), IDR_W_RADL slice.
        headers = [
            b"\x40\x01\x0c\x01\xff\xff\x01\x60",
            b"\x42\x01\x01\x01\x60",
            b"\x44\x01\xc1\x72",
            b"\x26\x01\xaf",
        ]
    stream = b"".join(start + h for h in headers)
    return stream + hashlib.shake_256(codec.encode()).digest(length - len(stream))


# --------------------------------------------------------------------------
# fixtures

FIXTURE_PATIENT = ("Test^Patient", "GW-PAT-0001")
FIXTURE_SIZE = 64  # rows and columns of fixture images


def ct_instance(
    transfer_syntax: str,
    study: int,
    series: int,
    instance: int,
    *,
    study_description: str,
    series_description: str,
) -> Dataset:
    """A 64x64 CT slice with native pixel data in `transfer_syntax`."""
    ds = base_dataset(
        CT_IMAGE_STORAGE,
        uid(1, study, series, instance),
        transfer_syntax,
        patient=FIXTURE_PATIENT,
        study_uid=uid(1, study),
        study_description=study_description,
        accession=f"ACC{study:04d}",
        series_uid=uid(1, study, series),
        series_number=series,
        series_description=series_description,
        modality="CT",
        instance_number=instance,
    )
    set_ct_image_module(ds, FIXTURE_SIZE, instance, uid(1, study, 0))
    set_native_pixel_data(ds, ct_phantom(FIXTURE_SIZE, instance))
    return ds


def write_study1(out: Path) -> list[Path]:
    """Two CT series x three instances, Explicit VR Little Endian."""
    paths = []
    for series, description in ((1, "Axial 5mm"), (2, "Axial 5mm bone")):
        for instance in (1, 2, 3):
            ds = ct_instance(
                ExplicitVRLittleEndian,
                1,
                series,
                instance,
                study_description="CT Chest",
                series_description=description,
            )
            paths.append(write(ds, out / "study1" / f"series{series}" / f"ct{instance}.dcm"))
    return paths


def dcmtk(tool: str, *args: str | Path) -> None:
    result = subprocess.run([tool, *map(str, args)], capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{tool} failed ({result.returncode}): {result.stderr.strip()}")


def ts_ct(study: int, transfer_syntax: str, name: str) -> Dataset:
    return ct_instance(
        transfer_syntax, study, 1, 1, study_description=f"Transfer syntax {name}", series_description=name
    )


def write_ts_native(out: Path, study: int, transfer_syntax: str, name: str) -> Path:
    """Implicit LE, explicit BE and deflated: pydicom encodes them itself."""
    return write(ts_ct(study, transfer_syntax, name), out / "ts" / f"{name}.dcm")


def write_ts_dcmtk(out: Path, tmp: Path, name: str, source: Dataset, tool: str, *options: str) -> Path:
    """Write `source` as Explicit VR LE, then compress it with a DCMTK codec."""
    source_path = write(source, tmp / f"{name}.src.dcm")
    target = out / "ts" / f"{name}.dcm"
    dcmtk(tool, *options, source_path, target)
    return target


def secondary_capture_8bit(study: int, name: str) -> Dataset:
    """An 8-bit SC image (JPEG baseline needs 8-bit input); pixels are a
    smooth window of the CT phantom so lossy compression stays small."""
    ds = base_dataset(
        SECONDARY_CAPTURE_STORAGE,
        uid(1, study, 1, 1),
        ExplicitVRLittleEndian,
        patient=FIXTURE_PATIENT,
        study_uid=uid(1, study),
        study_description=f"Transfer syntax {name}",
        accession=f"ACC{study:04d}",
        series_uid=uid(1, study, 1),
        series_number=1,
        series_description=name,
        modality="OT",
        instance_number=1,
    )
    ds.ConversionType = "WSD"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    set_image_pixel_module(ds, FIXTURE_SIZE, FIXTURE_SIZE, 8)
    windowed = (ct_phantom(FIXTURE_SIZE, 1).astype(np.int32) - 624) * 255 // 800
    set_native_pixel_data(ds, np.clip(windowed, 0, 255).astype(np.uint8))
    return ds


def write_ts_j2k(out: Path, study: int, transfer_syntax: str, name: str, high_throughput: bool) -> Path:
    ds = ts_ct(study, transfer_syntax, name)
    ds.LossyImageCompression = "00"
    set_encapsulated_pixel_data(
        ds, [uniform_j2k_codestream(FIXTURE_SIZE, ds.BitsStored, high_throughput)], basic_offset_table=True
    )
    return write(ds, out / "ts" / f"{name}.dcm")


def write_ts_video(out: Path, study: int, transfer_syntax: str, name: str, codec: str) -> Path:
    """Video Photographic Image with a fake single-fragment bitstream."""
    frames = 30
    ds = base_dataset(
        VIDEO_PHOTOGRAPHIC_STORAGE,
        uid(1, study, 1, 1),
        transfer_syntax,
        patient=FIXTURE_PATIENT,
        study_uid=uid(1, study),
        study_description=f"Transfer syntax {name}",
        accession=f"ACC{study:04d}",
        series_uid=uid(1, study, 1),
        series_number=1,
        series_description=name,
        modality="XC",
        instance_number=1,
    )
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "YBR_PARTIAL_420"
    ds.PlanarConfiguration = 0
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = Tag("FrameTime")
    ds.FrameTime = "33.3333"
    ds.CineRate = 30
    ds.RecommendedDisplayFrameRate = 30
    ds.StartTrim = 1
    ds.StopTrim = frames
    ds.Rows = 480
    ds.Columns = 640
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = "ISO_14496_10" if codec == "h264" else "ISO_23008_2"
    ds.AcquisitionContextSequence = Sequence()
    set_encapsulated_pixel_data(ds, [fake_video_stream(codec, 4096)], basic_offset_table=False)
    return write(ds, out / "ts" / f"{name}.dcm")


def write_transfer_syntaxes(out: Path) -> list[Path]:
    """One instance per transfer syntax family, each in its own study."""
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)  # uncompressed sources for the DCMTK codecs
        return [
            write_ts_native(out, 10, ImplicitVRLittleEndian, "implicit_le"),
            write_ts_native(out, 11, ExplicitVRBigEndian, "explicit_be"),
            write_ts_native(out, 12, DeflatedExplicitVRLittleEndian, "deflated_le"),
            write_ts_dcmtk(
                out, tmp, "jpeg_baseline", secondary_capture_8bit(13, "jpeg_baseline"), DCMCJPEG, "+eb", "+un"
            ),
            write_ts_dcmtk(
                out,
                tmp,
                "jpeg_lossless_sv1",
                ts_ct(14, ExplicitVRLittleEndian, "jpeg_lossless_sv1"),
                DCMCJPEG,
                "+e1",
            ),
            write_ts_dcmtk(
                out, tmp, "jpegls_lossless", ts_ct(15, ExplicitVRLittleEndian, "jpegls_lossless"), DCMCJPLS
            ),
            write_ts_dcmtk(
                out, tmp, "rle_lossless", ts_ct(16, ExplicitVRLittleEndian, "rle_lossless"), DCMCRLE
            ),
            write_ts_j2k(out, 17, JPEG2000Lossless, "j2k_lossless", high_throughput=False),
            write_ts_j2k(out, 18, HTJ2KLossless, "htj2k_lossless", high_throughput=True),
            write_ts_video(out, 19, MPEG4HP41, "mpeg4_avc_hp41", "h264"),
            write_ts_video(out, 20, HEVCMP51, "hevc_main_l51", "hevc"),
        ]


def write_multiframe(out: Path) -> Path:
    """Classic multi-frame: Multi-frame Grayscale Word SC, 4 frames."""
    study, frames = 30, 4
    ds = base_dataset(
        MF_GRAYSCALE_WORD_SC_STORAGE,
        uid(1, study, 1, 1),
        ExplicitVRLittleEndian,
        patient=FIXTURE_PATIENT,
        study_uid=uid(1, study),
        study_description="Multi-frame",
        accession=f"ACC{study:04d}",
        series_uid=uid(1, study, 1),
        series_number=1,
        series_description="Multi-frame grayscale word SC",
        modality="OT",
        instance_number=1,
    )
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.ConversionType = "WSD"
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = Tag("FrameTime")
    ds.FrameTime = "100"
    set_image_pixel_module(ds, FIXTURE_SIZE, FIXTURE_SIZE, 12)
    set_native_pixel_data(ds, np.stack([ct_phantom(FIXTURE_SIZE, i) for i in range(1, frames + 1)]))
    return write(ds, out / "multiframe" / "mf_grayscale_word_sc.dcm")


def code(value: str, scheme: str, meaning: str) -> Sequence:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return Sequence([item])


def write_sr(out: Path) -> Path:
    """Basic Text SR: an object without pixel data or image geometry."""
    study = 40
    ds = base_dataset(
        BASIC_TEXT_SR_STORAGE,
        uid(1, study, 1, 1),
        ExplicitVRLittleEndian,
        patient=FIXTURE_PATIENT,
        study_uid=uid(1, study),
        study_description="Report",
        accession=f"ACC{study:04d}",
        series_uid=uid(1, study, 1),
        series_number=1,
        series_description="Basic text report",
        modality="SR",
        instance_number=1,
    )
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = code("18748-4", "LN", "Diagnostic Imaging Report")
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    ds.ReferencedPerformedProcedureStepSequence = Sequence()
    ds.PerformedProcedureCodeSequence = Sequence()
    finding = Dataset()
    finding.RelationshipType = "CONTAINS"
    finding.ValueType = "TEXT"
    finding.ConceptNameCodeSequence = code("121071", "DCM", "Finding")
    finding.TextValue = "No acute findings."
    ds.ContentSequence = Sequence([finding])
    return write(ds, out / "sr" / "basic_text_sr.dcm")


def manifest_entry(out: Path, path: Path) -> dict:
    """Describe a written fixture from what is actually in the file (reading
    it back completely also proves pydicom can parse it)."""
    ds = dcmread(path)
    transfer_syntax = str(ds.file_meta.TransferSyntaxUID)
    flags = STORESCU_FLAGS[transfer_syntax]
    entry = {
        "file": path.relative_to(out).as_posix(),
        "transfer_syntax": transfer_syntax,
        "storescu_flags": flags if flags is not None else [],
        "sop_class": str(ds.SOPClassUID),
        "sop_instance": str(ds.SOPInstanceUID),
        "study": str(ds.StudyInstanceUID),
        "series": str(ds.SeriesInstanceUID),
    }
    if flags is None:
        entry["peer"] = "pynetdicom"
    return entry


def cmd_fixtures(args: argparse.Namespace) -> None:
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [*write_study1(out), *write_transfer_syntaxes(out), write_multiframe(out), write_sr(out)]
    manifest = [manifest_entry(out, p) for p in sorted(paths)]
    (out / "fixtures.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {len(manifest)} fixtures to {out}")


# --------------------------------------------------------------------------
# bench and big: header via pydicom, Pixel Data streamed as raw bytes


def write_streamed(path: Path, ds: Dataset, pixel_length: int, pattern: bytes) -> None:
    """Write `ds` (Explicit VR LE, no Pixel Data) followed by an OW Pixel Data
    element of `pixel_length` bytes filled by repeating `pattern`.

    Pixel Data (7FE0,0010) must be the last element, so `ds` must not hold
    any element with a larger tag.
    """
    chunk = pattern * max(1, CHUNK // len(pattern))
    with open(path, "wb") as f:
        dcmwrite(f, ds, enforce_file_format=True)
        f.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, pixel_length))
        remaining = pixel_length
        while remaining:
            f.write(chunk[: min(remaining, len(chunk))])
            remaining -= min(remaining, len(chunk))


def streamed_template(
    sop_class: str, set_id: int, run_id: int, name: str, rows: int, frames: int | None
) -> Dataset:
    """Header-only dataset for bench/big instances; UIDs are patched per
    instance.  `run_id` is part of every UID."""
    ds = base_dataset(
        sop_class,
        uid(2, set_id, run_id, 1, 1),
        ExplicitVRLittleEndian,
        patient=(f"Bench^{name}", f"BENCH-{name.upper()}-{run_id}"),
        study_uid=uid(2, set_id, run_id),
        study_description=f"Benchmark {name}",
        accession=f"B{set_id}R{run_id}",
        series_uid=uid(2, set_id, run_id, 1),
        series_number=1,
        series_description=f"{name} series 1",
        modality="CT" if frames is None else "OT",
        instance_number=1,
    )
    if frames is None:
        set_ct_image_module(ds, rows, 1, uid(2, set_id, run_id, 0))
    else:
        ds.ImageType = ["DERIVED", "SECONDARY"]
        ds.ConversionType = "WSD"
        ds.NumberOfFrames = frames
        ds.FrameIncrementPointer = Tag("FrameTime")
        ds.FrameTime = "100"
        set_image_pixel_module(ds, rows, rows, 12)
    return ds


# name -> (set id in UIDs, default count, rows, frames or None for CT, series)
BENCH_SETS = {
    "ct512": (1, 1000, 512, None, 4),
    "small9": (2, 5000, 64, None, 5),
    "mf100": (3, 4, 512, 200, 2),
}


def cmd_bench(args: argparse.Namespace) -> None:
    set_id, default_count, rows, frames, series_count = BENCH_SETS[args.set]
    count = args.count if args.count is not None else default_count
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sop_class = CT_IMAGE_STORAGE if frames is None else MF_GRAYSCALE_WORD_SC_STORAGE
    ds = streamed_template(sop_class, set_id, args.run_id, args.set, rows, frames)
    pattern = ct_phantom(rows, 1).astype("<u2").tobytes()
    pixel_length = len(pattern) * (frames or 1)
    for index in range(count):
        series = index * series_count // count + 1
        instance = index + 1
        ds.SeriesInstanceUID = uid(2, set_id, args.run_id, series)
        ds.SeriesNumber = series
        ds.SeriesDescription = f"{args.set} series {series}"
        ds.SOPInstanceUID = uid(2, set_id, args.run_id, series, instance)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = instance
        if frames is None:
            ds.ImagePositionPatient[2] = f"{-5 * instance}"
            ds.SliceLocation = f"{-5 * instance}"
        write_streamed(out / f"{args.set}_{instance:05d}.dcm", ds, pixel_length, pattern)
    print(f"wrote {count} {args.set} instances to {out}")


def cmd_big(args: argparse.Namespace) -> None:
    rows = 512
    frame_length = rows * rows * 2  # 512 KiB: two frames per MiB
    pixel_length = args.size_mib * 1024 * 1024
    if not 0 < pixel_length <= 0xFFFFFFFE:
        sys.exit("--size-mib must be between 1 and 4095 (32-bit element length)")
    # The size takes the place of the run id, so different sizes never share UIDs.
    ds = streamed_template(
        MF_GRAYSCALE_WORD_SC_STORAGE, 4, args.size_mib, "big", rows, pixel_length // frame_length
    )
    pattern = ct_phantom(rows, 1).astype("<u2").tobytes()
    out = Path(args.out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_streamed(out, ds, pixel_length, pattern)
    print(f"wrote {out} ({pixel_length // frame_length} frames, {args.size_mib} MiB pixel data)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    fixtures = sub.add_parser("fixtures", help="small committed fixtures + fixtures.json")
    fixtures.add_argument("out_dir")
    fixtures.add_argument("--long-uids", action="store_true", help="64-character UIDs")
    fixtures.set_defaults(func=cmd_fixtures)

    bench = sub.add_parser("bench", help="benchmark study (not committed)")
    bench.add_argument("out_dir")
    bench.add_argument("--set", required=True, choices=sorted(BENCH_SETS))
    bench.add_argument("--count", type=int, help="number of instances (default depends on --set)")
    bench.add_argument("--run-id", type=int, default=1, help="varies all UIDs, for repeated runs")
    bench.set_defaults(func=cmd_bench)

    big = sub.add_parser("big", help="one very large instance, streamed")
    big.add_argument("out_file")
    big.add_argument("--size-mib", type=int, required=True)
    big.add_argument("--long-uids", action="store_true", help="64-character UIDs")
    big.set_defaults(func=cmd_big)

    args = parser.parse_args()
    if getattr(args, "long_uids", False):
        global UID_LENGTH
        UID_LENGTH = 64
    args.func(args)


if __name__ == "__main__":
    main()
