import SwitchyardCommands

await SwitchyardCommand.start()
