#!/bin/sh
# Install this vdgui bundle for the current user: links vdgui and vdimg into
# ~/.local/bin and adds the menu entry, the icon and the disk image MIME types
# under ~/.local/share.  PREFIX=/usr/local sh install.sh (as root) installs it for
# everybody.  The bundle folder stays where it is: move it first, then install.
#
# To remove it: delete the files this script lists, then the bundle folder.
set -eu

bundle=$(cd "$(dirname "$0")" && pwd)
prefix=${PREFIX:-$HOME/.local}
id=io.github.vdgui.vdgui

install_file() {  # SOURCE DESTINATION
	mkdir -p "$(dirname "$2")"
	cp "$1" "$2"
	echo "$2"
}

mkdir -p "$prefix/bin"
for program in vdgui vdimg; do
	ln -sf "$bundle/$program" "$prefix/bin/$program"
	echo "$prefix/bin/$program -> $bundle/$program"
done

# The menu entry starts the program by its full path: ~/.local/bin may not be on
# the PATH that the desktop session has.
mkdir -p "$prefix/share/applications"
sed -e "s|^Exec=vdgui |Exec=$prefix/bin/vdgui |" -e "s|^TryExec=vdgui\$|TryExec=$prefix/bin/vdgui|" \
	"$bundle/share/applications/$id.desktop" >"$prefix/share/applications/$id.desktop"
echo "$prefix/share/applications/$id.desktop"

install_file "$bundle/share/metainfo/$id.metainfo.xml" "$prefix/share/metainfo/$id.metainfo.xml"
install_file "$bundle/share/mime/packages/$id.mime.xml" "$prefix/share/mime/packages/$id.mime.xml"
for icon in "$bundle"/share/icons/hicolor/*/apps/"$id".*; do
	install_file "$icon" "$prefix/share/icons/${icon#"$bundle/share/icons/"}"
done

# Refresh the desktop's caches where the tools exist (they are optional).
if command -v update-mime-database >/dev/null 2>&1; then
	update-mime-database "$prefix/share/mime"
fi
if command -v update-desktop-database >/dev/null 2>&1; then
	update-desktop-database "$prefix/share/applications"
fi
if command -v gtk-update-icon-cache >/dev/null 2>&1 && [ -f "$prefix/share/icons/hicolor/index.theme" ]; then
	gtk-update-icon-cache --quiet "$prefix/share/icons/hicolor" || true
fi
