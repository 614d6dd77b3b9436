package bundle

var ParseCommandFigures = parseCommandFigures
