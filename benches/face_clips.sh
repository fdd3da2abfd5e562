#!/usr/bin/env bash
# Builds the face-evaluation clips into DIR from the real media in fixtures/ (sources in
# fixtures/media/SOURCES.md): nothing is downloaded.
#
#   webcam.mp4    carphone_pristine.mp4 as is: one large moving face, 176x144, 120 frames
#   group.mp4     six portraits in a 3x2 grid (960x720), panned slowly, 60 frames
#   photos.mp4    multi-face and partial-face photos, 15 frames each, 720x540, 75 frames
#   crowd.mp4     OpenCV's vtest (pedestrians from a distance, 768x576), 100 frames
#   animation.mp4 OpenCV's Megamind clip (drawn faces), 720x528, 120 frames
#   street.mp4    bikes.mp4 as is: small distant people, 640x272, 250 frames
#   closeup.mp4   one face 500-600 px tall in 1280x720 (a webcam close to its user), 40 frames
#
#   benches/face_clips.sh DIR
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
M=$ROOT/fixtures/media
F=$M/faces
DIR=${1:?usage: face_clips.sh DIR}
mkdir -p "$DIR"
ff() { ffmpeg -v error -y "$@"; }
enc=(-c:v libx264 -crf 16 -pix_fmt yuv420p -an)

cp "$M/carphone_pristine.mp4" "$DIR/webcam.mp4"
cp "$M/bikes.mp4" "$DIR/street.mp4"
cp "$F/vtest100.mp4" "$DIR/crowd.mp4"
cp "$F/megamind120.mp4" "$DIR/animation.mp4"

cell="scale=320:360:force_original_aspect_ratio=increase,crop=320:360,setsar=1"
ff -framerate 20 -loop 1 -i "$F/obama.jpg" -framerate 20 -loop 1 -i "$F/biden.jpg" -framerate 20 -loop 1 -i "$F/obama2.jpg" \
   -framerate 20 -loop 1 -i "$M/astronaut.png" -framerate 20 -loop 1 -i "$M/camera.png" -framerate 20 -loop 1 -i "$F/obama_partial_face.jpg" \
   -filter_complex "[0]$cell[a];[1]$cell[b];[2]$cell[c];[3]$cell[d];[4]format=rgb24,$cell[e];[5]$cell[f];\
[a][b][c][d][e][f]xstack=inputs=6:layout=0_0|320_0|640_0|0_360|320_360|640_360,format=yuv420p,\
crop=912:684:'round(48*n/59)':'round(36*n/59)',scale=960:720" \
   -r 20 -frames:v 60 "${enc[@]}" "$DIR/group.mp4"

slide="scale=720:540:force_original_aspect_ratio=decrease,pad=720:540:(ow-iw)/2:(oh-ih)/2,setsar=1,format=yuv420p"
ff -framerate 15 -loop 1 -i "$F/obama3.jpg" -framerate 15 -loop 1 -i "$F/messi5.jpg" -framerate 15 -loop 1 -i "$M/person.jpg" \
   -framerate 15 -loop 1 -i "$F/obama_partial_face.jpg" -framerate 15 -loop 1 -i "$F/obama2.jpg" \
   -filter_complex "[0]$slide,trim=end_frame=15[a];[1]$slide,trim=end_frame=15[b];[2]$slide,trim=end_frame=15[c];\
[3]$slide,trim=end_frame=15[d];[4]$slide,trim=end_frame=15[e];[a][b][c][d][e]concat=n=5:v=1:a=0" \
   -r 15 -frames:v 75 "${enc[@]}" "$DIR/photos.mp4"

# closeup.mp4: one face 500-600 px tall in a 1280x720 frame (a webcam close to its user), panned
ff -framerate 20 -loop 1 -i "$F/obama.jpg" \
   -vf "scale=2000:-2,crop=1280:720:'400+4*n':'200+2*n',format=yuv420p" \
   -frames:v 40 "${enc[@]}" "$DIR/closeup.mp4"
