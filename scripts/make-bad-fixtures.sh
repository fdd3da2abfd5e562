#!/usr/bin/env bash
# Regenerates fixtures/bad/media/: hostile and unusual clips for the decode sweep test, derived
# from fixtures/media/ (bikes.mp4, carphone_pristine.mp4, camera.png) and from lavfi sources.
# Idempotent and deterministic for a given ffmpeg build: single-threaded encoders, bitexact
# muxing, no metadata carried over, seeded bytes (SHA-256 counter stream). Needs ffmpeg, python3.
# What each file is and what the pipeline should do with it: fixtures/bad/media/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."

SRC=fixtures/media
OUT=fixtures/bad/media
mkdir -p "$OUT"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

FF=(ffmpeg -hide_banner -nostdin -loglevel error -y)
# Bitexact muxing and encoding, no metadata or chapters from the input, one thread (slice counts,
# and so bytes, of some encoders follow the thread count).
BX=(-fflags +bitexact -flags:v +bitexact -flags:a +bitexact -map_metadata -1 -map_chapters -1
  -threads 1)
X264=(-c:v libx264 -preset veryfast -x264-params threads=1)

# Writes stdin to $OUT/$1 through a temporary file, so a failed step leaves no half file.
put() { cat >"$TMP/put" && mv -f "$TMP/put" "$OUT/$1"; }

# Python helpers: seeded bytes, SPS and mp4 header patching, PNG writing, placeholder patching.
cat >"$TMP/h.py" <<'EOF'
import hashlib, struct, sys, zlib

def seeded(n, seed):
    out = bytearray(); i = 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}:{i}".encode()).digest(); i += 1
    return bytes(out[:n])

def png(w, h):
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)  # 8-bit grey
    idat = zlib.compress(b"\x00" * 64, 9)                 # far too little data for w x h
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")

def unescape(b):  # H.264 emulation prevention bytes out
    out = bytearray(); z = 0
    for x in b:
        if z >= 2 and x == 3:
            z = 0; continue
        out.append(x); z = z + 1 if x == 0 else 0
    return bytes(out)

def escape(b):  # and back in
    out = bytearray(); z = 0
    for x in b:
        if z >= 2 and x <= 3:
            out.append(3); z = 0
        out.append(x); z = z + 1 if x == 0 else 0
    return bytes(out)

def sps_resize(rbsp, w_mbs, h_mbs):
    """A Baseline SPS with pic_width/height_in_mbs rewritten (no cropping, frame_mbs_only)."""
    bits = "".join(f"{x:08b}" for x in rbsp); p = 0
    def u(n):
        nonlocal p; v = int(bits[p:p + n], 2); p += n; return v
    def ue():
        nonlocal p
        z = 0
        while bits[p] == "0":
            z += 1; p += 1
        p += 1; v = int(bits[p:p + z], 2) if z else 0; p += z
        return (1 << z) - 1 + v
    def ue_bits(v):
        v += 1; return "0" * (v.bit_length() - 1) + format(v, "b")
    profile = u(8); u(8); u(8); ue()
    assert profile == 66, f"need a Baseline SPS, got profile {profile}"
    ue()                       # log2_max_frame_num_minus4
    poc = ue(); assert poc in (0, 2), poc
    if poc == 0: ue()          # log2_max_pic_order_cnt_lsb_minus4
    ue(); u(1)                 # max_num_ref_frames, gaps_in_frame_num_allowed
    start = p; ue(); ue(); end = p
    out = bits[:start] + ue_bits(w_mbs - 1) + ue_bits(h_mbs - 1) + bits[end:]
    out = out.rstrip("0"); assert out.endswith("1")   # rbsp stop bit
    out += "0" * (-len(out) % 8)
    return bytes(int(out[i:i + 8], 2) for i in range(0, len(out), 8))

def annexb_resize(data, w, h):
    assert w % 16 == 0 and h % 16 == 0
    out = bytearray()
    for nal in data.split(b"\x00\x00\x00\x01"):
        if not nal: continue
        if nal[0] & 0x1F == 7:
            nal = nal[:1] + escape(sps_resize(unescape(nal[1:]), w // 16, h // 16))
        out += b"\x00\x00\x00\x01" + nal
    return bytes(out)

def mp4_claim(data, w, h, fourcc):
    """Width/height of the avc1 sample entry and of tkhd set to w x h; the entry renamed."""
    b = bytearray(data)
    s = b.find(b"stsd"); assert s > 0
    i = b.find(b"avc1", s); assert i > 0
    b[i + 28:i + 32] = struct.pack(">HH", w, h)
    b[i:i + 4] = fourcc.encode()
    j = b.find(b"tkhd"); assert j > 0
    end = j - 4 + struct.unpack(">I", b[j - 4:j])[0]
    b[end - 8:end] = struct.pack(">II", w << 16, h << 16)
    return bytes(b)

def replace_once(data, old, new):
    assert len(old) == len(new) and data.count(old) == 1, (len(old), len(new), data.count(old))
    return data.replace(old, new)

cmd = sys.argv[1]; rd = sys.stdin.buffer.read; wr = sys.stdout.buffer.write
if cmd == "seeded": wr(seeded(int(sys.argv[2]), sys.argv[3]))
elif cmd == "png": wr(png(int(sys.argv[2]), int(sys.argv[3])))
elif cmd == "sps": wr(annexb_resize(rd(), int(sys.argv[2]), int(sys.argv[3])))
elif cmd == "claim": wr(mp4_claim(rd(), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]))
elif cmd == "placeholder":  # an upper-case ASCII stand-in of the byte length of file argv[2]
    n = len(open(sys.argv[2], "rb").read()); stem = b"CLEARFRAMEFORGEDKEY"
    wr((stem * (n // len(stem) + 1))[:n])
elif cmd == "replace":       # argv[2]: file with the stand-in, argv[3]: file with the real bytes
    wr(replace_once(rd(), open(sys.argv[2], "rb").read(), open(sys.argv[3], "rb").read()))
else: raise SystemExit(f"unknown helper {cmd}")
EOF
py() { python3 "$TMP/h.py" "$@"; }

# --- not a video at all -------------------------------------------------------------------------
: | put zero-bytes.mp4
py seeded 4096 clearframe-bad-media | put random-bytes.mp4
"${FF[@]}" -i "$SRC/camera.png" -vf scale=64:64 -c:v png "${BX[@]}" -f image2 -update 1 \
  "$TMP/small.png"
put png-named.mp4 <"$TMP/small.png"

# --- truncated faststart mp4 --------------------------------------------------------------------
"${FF[@]}" -i "$SRC/bikes.mp4" -t 2 -vf scale=320:136 -an "${X264[@]}" -crf 30 -pix_fmt yuv420p \
  "${BX[@]}" -movflags +faststart "$TMP/two-seconds.mp4"
size=$(stat -c %s "$TMP/two-seconds.mp4")
for pct in 10 50 90; do
  head -c $((size * pct / 100)) "$TMP/two-seconds.mp4" | put "truncated-$pct.mp4"
done

# --- headers that claim huge frames -------------------------------------------------------------
# A tiny 16x16 Baseline H.264 stream (2 intra frames) to patch.
"${FF[@]}" -f lavfi -i "color=c=gray:s=16x16:r=25:d=0.08" "${X264[@]}" -profile:v baseline \
  -x264-params threads=1:keyint=1 -pix_fmt yuv420p "${BX[@]}" -f h264 "$TMP/tiny.h264"
"${FF[@]}" -i "$TMP/tiny.h264" -c copy "${BX[@]}" "$TMP/tiny.mp4"
# Sample entry and tkhd claim 30000x30000 under an unknown fourcc: no decoder can be opened, so
# ffprobe keeps (and reports) the container's 30000x30000.
py claim 30000 30000 xxxx <"$TMP/tiny.mp4" | put huge-header.mp4
# The same claim under avc1: the decoder reads the SPS and the frames are really 16x16.
py claim 30000 30000 avc1 <"$TMP/tiny.mp4" | put container-claims-30000.mp4
# A PNG whose IHDR says 30000x30000 (valid CRC, 64 bytes of image data), named .mp4.
py png 30000 30000 | put huge-header-png.mp4
# A y4m header for 30000x30000 and one short frame.
{ printf 'YUV4MPEG2 W30000 H30000 F25:1 Ip A1:1 C420jpeg\nFRAME\n'; head -c 64 /dev/zero; } |
  put huge-header.y4m
# The SPS says 8192x8192 (over ffmpeg's limits? no: it decodes, error-concealed, at 8192x8192;
# over the pipeline's 8K UHD default of 7680*4320 pixels: yes).
py sps 8192 8192 <"$TMP/tiny.h264" >"$TMP/big.h264"
"${FF[@]}" -i "$TMP/big.h264" -c copy "${BX[@]}" "$TMP/big.mp4"
put huge-sps-8192x8192.mp4 <"$TMP/big.mp4"

# --- no video, no frames ------------------------------------------------------------------------
"${FF[@]}" -f lavfi -i "sine=frequency=440:sample_rate=44100:duration=1" -c:a aac -b:a 32k \
  "${BX[@]}" "$TMP/audio.m4a"
put audio-only.m4a <"$TMP/audio.m4a"
# A plain mp4 drops a track without samples; a fragmented one keeps it in its empty moov.
"${FF[@]}" -i "$TMP/two-seconds.mp4" -c copy -frames:v 0 "${BX[@]}" \
  -movflags +empty_moov+frag_keyframe+default_base_moof "$TMP/zero.mp4"
put zero-frames.mp4 <"$TMP/zero.mp4"

# --- odd geometry and pixel formats -------------------------------------------------------------
enc() { # enc NAME INPUT-ARGS... -- OUTPUT-ARGS...
  local name=$1; shift
  local in=()
  while [ "$1" != -- ]; do in+=("$1"); shift; done
  shift
  local ext=${name##*.}
  "${FF[@]}" "${in[@]}" -an "$@" "${BX[@]}" "$TMP/enc.$ext"
  put "$name" <"$TMP/enc.$ext"
}
enc one-by-one.mkv -i "$SRC/bikes.mp4" -t 1 -- -vf scale=1:1 -c:v ffv1 -pix_fmt yuv444p
enc three-by-five.mkv -i "$SRC/bikes.mp4" -t 1 -- -vf scale=3:5 -c:v ffv1 -pix_fmt yuv444p
enc odd-641x361.mp4 -i "$SRC/bikes.mp4" -t 1 -- -vf scale=641:361 "${X264[@]}" -crf 35 \
  -pix_fmt yuv444p
enc gray.mkv -i "$SRC/carphone_pristine.mp4" -frames:v 12 -- -vf scale=64:48,format=gray \
  -c:v ffv1 -pix_fmt gray
enc ten-bit.mkv -i "$SRC/bikes.mp4" -t 1 -- -vf scale=320:136 "${X264[@]}" -crf 32 \
  -pix_fmt yuv420p10le
enc mjpeg.avi -i "$SRC/bikes.mp4" -frames:v 10 -- -vf scale=160:68 -c:v mjpeg -q:v 8 \
  -pix_fmt yuvj420p
enc mpeg4-part2.avi -i "$SRC/bikes.mp4" -frames:v 25 -- -vf scale=160:68 -c:v mpeg4 -q:v 8

# --- timing -------------------------------------------------------------------------------------
# 20 frames at irregular times (ms): gaps alternate 80/20, and a 520 ms stall after frame 9.
enc vfr.mkv -i "$SRC/bikes.mp4" -frames:v 20 -- \
  -vf "scale=160:68,settb=1/1000,setpts='N*50+mod(N\,2)*30+gte(N\,10)*500'" "${X264[@]}" -crf 32 \
  -fps_mode vfr -enc_time_base:v 1:1000
# Two frames, at 0 s and at 3600 s.
enc gap-one-hour.mkv -f lavfi -i "color=c=gray:s=64x48:r=25" -- -frames:v 2 \
  -vf "setpts='N*3600/TB'" "${X264[@]}" -crf 30 -fps_mode passthrough

# --- rotation -----------------------------------------------------------------------------------
"${FF[@]}" -i "$SRC/bikes.mp4" -t 1 -vf scale=320:136 -an "${X264[@]}" -crf 32 "${BX[@]}" \
  "$TMP/rot-src.mp4"
# ffmpeg 5.1 has no -display_rotation; the mov muxer turns a `rotate` tag into a display matrix.
"${FF[@]}" -i "$TMP/rot-src.mp4" -c copy -metadata:s:v:0 rotate=90 "${BX[@]}" "$TMP/rot.mp4"
put rotated-90.mp4 <"$TMP/rot.mp4"

# --- geometry that changes mid-stream -----------------------------------------------------------
# Two MPEG-TS segments back to back (TS is a stream: a decoder takes the new SPS as it comes). The
# container and ffprobe report the first segment's geometry; the frames after it differ.
ts() { # ts NAME INPUT-ARGS... -- OUTPUT-ARGS...
  local name=$1; shift
  local in=()
  while [ "$1" != -- ]; do in+=("$1"); shift; done
  shift
  "${FF[@]}" "${in[@]}" -an "$@" "${X264[@]}" -crf 30 -pix_fmt yuv420p "${BX[@]}" \
    -f mpegts "$TMP/$name.ts"
}
# 6 grey frames at 704x144, then carphone's 176x144 (ffprobe: 704x144).
ts wide -f lavfi -i "color=c=gray:s=704x144:r=30000/1001" -- -frames:v 6
ts narrow -i "$SRC/carphone_pristine.mp4" -- -frames:v 30 -vf setsar=1
cat "$TMP/wide.ts" "$TMP/narrow.ts" | put size-change.ts
# carphone with square pixels for 6 frames, then with pixels 4 times as tall as wide (ffprobe: 1:1).
ts square -i "$SRC/carphone_pristine.mp4" -- -frames:v 6 -vf setsar=1
ts tall -i "$SRC/carphone_pristine.mp4" -- -frames:v 30 -vf setsar=1/4
cat "$TMP/square.ts" "$TMP/tall.ts" | put sar-change.ts

# --- metadata that forges ffmpeg's log ----------------------------------------------------------
# ffmpeg prints metadata keys raw (values get an indent after each newline): a key with newlines
# writes whole lines of its own into the log, before the real `Output #0` block. 320x544 has the
# byte count of the real 640x272 RGB frames, so a parser fooled by it reads every byte, wrongly.
"${FF[@]}" -i "$SRC/bikes.mp4" -t 1 -an "${X264[@]}" -crf 34 -pix_fmt yuv420p "${BX[@]}" \
  "$TMP/forge-src.mp4"
printf '%s' $'x\nOutput #0, rawvideo, to \'pipe:1\':\n  Stream #0:0: Video: rawvideo (RGB[24] / 0x18424752), rgb24, 320x544, q=2-31, 200 kb/s, 25 fps, 25 tbn\ny' \
  >"$TMP/key-geometry"
printf '%s' $'x\n[info] Output #0, rawvideo, to \'pipe:1\':\n[info]   Stream #0:0: Video: rawvideo (RGB[24] / 0x18424752), rgb24, 320x544, q=2-31, 200 kb/s, 25 fps, 25 tbn\n[Parsed_showinfo_0 @ 0x1] n:   0 pts:      0 pts_time:0       pos:       48 fmt:rgb24 sar:1/1 s:320x544 i:P iskey:1 type:I checksum:00000000 plane_checksum:[00000000] mean:[0] stdev:[0.0]\n[Parsed_showinfo_0 @ 0x1] [info] n:   1 pts:15798 pts_time:1234.5 pos:       48 fmt:rgb24 sar:1/1 s:320x544 i:P iskey:1 type:I checksum:00000000 plane_checksum:[00000000] mean:[0] stdev:[0.0]\ny' \
  >"$TMP/key-showinfo"
# The keys go in as upper-case stand-ins of the same length (the Matroska muxer upper-cases tag
# names and turns spaces into underscores; ffmpeg's -metadata splits at the first '='), then the
# stand-in bytes are swapped for the real key in the muxed file.
forge() { # forge NAME KEYFILE MUXER-ARGS...
  local name=$1 key=$2; shift 2
  local ext=${name##*.}
  py placeholder "$key" >"$TMP/stand-in"
  "${FF[@]}" -i "$TMP/forge-src.mp4" -c copy "${BX[@]}" "$@" \
    -metadata "$(cat "$TMP/stand-in")=z" "$TMP/forge.$ext"
  py replace "$TMP/stand-in" "$key" <"$TMP/forge.$ext" | put "$name"
}
forge forged-geometry.mp4 "$TMP/key-geometry" -movflags use_metadata_tags
forge forged-geometry.mkv "$TMP/key-geometry" -write_crc32 0
forge forged-showinfo.mp4 "$TMP/key-showinfo" -movflags use_metadata_tags

# Personal metadata that ffmpeg prints in its log, then a decode error: faststart (an index at the
# end would be cut off first, and with it the metadata), cut at 55%: one frame decodes, so ffmpeg
# prints the metadata again in its `Output #0` block, right before the `partial file` error.
"${FF[@]}" -i "$SRC/bikes.mp4" -t 1 -vf scale=320:136 -an "${X264[@]}" -crf 30 -pix_fmt yuv420p \
  "${BX[@]}" -metadata title="Secret Family Name" \
  -metadata comment="Filmed at 12 Acacia Avenue, Jane Doe, born 1990-01-01" \
  -metadata location="+51.5007-000.1246/" -movflags +faststart "$TMP/meta.mp4"
size=$(stat -c %s "$TMP/meta.mp4")
head -c $((size * 55 / 100)) "$TMP/meta.mp4" | put metadata-then-corrupt.mp4

echo "make-bad-fixtures: wrote $(find "$OUT" -type f ! -name README.md | wc -l) files to $OUT" >&2
