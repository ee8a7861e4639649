"""What a release is made of besides the executable: sums, signatures, manifest, reports, install.sh, CI."""
