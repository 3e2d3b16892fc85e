; Inno Setup script for qhybrid's Windows installer. packaging/build.py --target windows runs
;   iscc /DAppVersion=X.Y.Z /DAppFullVersion=... /DSourceDir=dist\qhybrid /DOutputDir=dist
;        /DIconFile=...\qhybrid.ico /DOutputBaseName=qhybrid-VERSION-windows-setup qhybrid.iss
; It installs the frozen folder into Program Files\qhybrid (or the user's Programs folder
; without admin rights), a Start-menu entry for the windowed qhybrid-window.exe, an optional
; desktop icon, qhybrid.exe (the console program) on the PATH when chosen, and an uninstaller.

#ifndef AppVersion
  #define AppVersion "0.0.0"
#endif
#ifndef AppFullVersion
  #define AppFullVersion AppVersion
#endif
#ifndef SourceDir
  #define SourceDir "..\..\dist\qhybrid"
#endif
#ifndef OutputDir
  #define OutputDir "..\..\dist"
#endif
#ifndef OutputBaseName
  #define OutputBaseName "qhybrid-" + AppVersion + "-windows-setup"
#endif

[Setup]
AppId={{6F3B2A1C-9D54-4E2B-8C1A-5A7E0B9C4D21}
AppName=qhybrid
AppVersion={#AppFullVersion}
VersionInfoVersion={#AppVersion}
AppPublisher=qhybrid developers
AppPublisherURL=https://github.com/qhybrid/qhybrid
DefaultDirName={autopf}\qhybrid
DefaultGroupName=qhybrid
DisableProgramGroupPage=yes
PrivilegesRequired=lowest
PrivilegesRequiredOverridesAllowed=dialog
ArchitecturesAllowed=x64compatible
ArchitecturesInstallIn64BitMode=x64compatible
OutputDir={#OutputDir}
OutputBaseFilename={#OutputBaseName}
Compression=lzma2/max
SolidCompression=yes
WizardStyle=modern
ChangesEnvironment=yes
UninstallDisplayIcon={app}\qhybrid-window.exe
#ifdef IconFile
SetupIconFile={#IconFile}
#endif

[Tasks]
Name: "desktopicon"; Description: "{cm:CreateDesktopIcon}"; GroupDescription: "{cm:AdditionalIcons}"; Flags: unchecked
Name: "addtopath"; Description: "Add qhybrid (the command-line program) to PATH"; Flags: unchecked

[Files]
Source: "{#SourceDir}\*"; DestDir: "{app}"; Flags: ignoreversion recursesubdirs createallsubdirs

[Icons]
Name: "{group}\qhybrid"; Filename: "{app}\qhybrid-window.exe"
Name: "{group}\qhybrid (headless demo)"; Filename: "{cmd}"; Parameters: "/k ""{app}\qhybrid.exe"" --headless"
Name: "{group}\Uninstall qhybrid"; Filename: "{uninstallexe}"
Name: "{autodesktop}\qhybrid"; Filename: "{app}\qhybrid-window.exe"; Tasks: desktopicon

[Registry]
Root: HKCU; Subkey: "Environment"; ValueType: expandsz; ValueName: "Path"; ValueData: "{olddata};{app}"; Tasks: addtopath; Check: NeedsAddPath(ExpandConstant('{app}'))

[Run]
Filename: "{app}\qhybrid-window.exe"; Description: "{cm:LaunchProgram,qhybrid}"; Flags: nowait postinstall skipifsilent

[UninstallDelete]
Type: filesandordirs; Name: "{app}"

[Code]
function NeedsAddPath(Dir: string): Boolean;
var
  Path: string;
begin
  if not RegQueryStringValue(HKEY_CURRENT_USER, 'Environment', 'Path', Path) then
    Path := '';
  Result := Pos(';' + Uppercase(Dir) + ';', ';' + Uppercase(Path) + ';') = 0;
end;

procedure CurUninstallStepChanged(CurUninstallStep: TUninstallStep);
var
  Path, Dir: string;
  P: Integer;
begin
  if CurUninstallStep <> usPostUninstall then
    exit;
  if not RegQueryStringValue(HKEY_CURRENT_USER, 'Environment', 'Path', Path) then
    exit;
  Dir := ';' + ExpandConstant('{app}');
  P := Pos(Uppercase(Dir), Uppercase(Path));
  if P > 0 then
  begin
    Delete(Path, P, Length(Dir));
    RegWriteExpandStringValue(HKEY_CURRENT_USER, 'Environment', 'Path', Path);
  end;
end;
