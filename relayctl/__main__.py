from relayctl.cli import main

main()
