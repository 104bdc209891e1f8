from lpla.cli import main

main()
