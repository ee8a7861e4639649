from dx.cli import main

main()
