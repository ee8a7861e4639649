from dxbuild.cli import main

main()
