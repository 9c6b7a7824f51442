from grounded_rl.cli import main

main()
