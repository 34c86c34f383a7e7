from impetus_cli.cli import main

main()
