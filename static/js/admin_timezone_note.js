'use strict';
// Django admin's date and time widgets (admin/js/admin/DateTimeShortcuts.js) put "Note: You are
// 1 hour behind server time." under every date and time field when the browser's time zone is
// not the practice's: about forty times on a practitioner's page (two per working-hours row).
// The note is kept once per page, above the form. Loaded after DateTimeShortcuts.js by
// templates/admin/change_form.html, before the page's load event runs its init.
{
    const shortcuts = window.DateTimeShortcuts;
    if (shortcuts) {
        const addWarning = shortcuts.addTimezoneWarning;
        shortcuts.addTimezoneWarning = function(inp) {
            const warningClass = shortcuts.timezoneWarningClass;
            if (document.querySelector('.' + warningClass)) {
                return;  // already on the page
            }
            addWarning.call(shortcuts, inp);
            const note = inp.parentNode.querySelector('.' + warningClass);
            const first = inp.form && inp.form.querySelector('fieldset, .inline-group');
            if (note && first) {
                note.classList.add('page-note');
                first.parentNode.insertBefore(note, first);
            }
        };
    }
}
