from trace_forge.cli import main

main()
