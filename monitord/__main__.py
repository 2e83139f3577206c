from monitord.cli import main

main()
