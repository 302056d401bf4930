import {
  ILabShell,
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { LabIcon } from '@jupyterlab/ui-components';

import { SyftModel } from './model';
import { PendingNotices } from './notify';
import { SyftSidebar } from './view';

const syftIcon = new LabIcon({
  name: 'jupyter-syft:icon',
  svgstr:
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24"><g class="jp-icon3" fill="#616161">' +
    '<path d="M12 2 3 6v6c0 5 3.8 9.3 9 10 5.2-.7 9-5 9-10V6l-9-4zm0 4a3 3 0 0 1 3 3v2h1v6H8v-6h1V9a3 3 0 0 1 3-3zm0 2a1 1 0 0 0-1 1v2h2V9a1 1 0 0 0-1-1z"/>' +
    '</g></svg>'
});

/**
 * Adds the Syft sidebar (network, datasets, your requests, approvals) on the left, and the
 * owner's notifications of requests waiting for a decision (the sidebar open or not).
 */
const plugin: JupyterFrontEndPlugin<void> = {
  id: 'jupyter-syft:sidebar',
  description: 'The Syft sidebar: network, datasets, your requests and approvals.',
  autoStart: true,
  requires: [ILabShell],
  optional: [ILayoutRestorer],
  activate: (
    app: JupyterFrontEnd,
    shell: ILabShell,
    restorer: ILayoutRestorer | null
  ) => {
    const model = new SyftModel();
    const sidebar = new SyftSidebar(model);
    sidebar.id = 'jp-syft-sidebar';
    sidebar.title.icon = syftIcon;
    sidebar.title.caption = 'Syft';
    shell.add(sidebar, 'left', { rank: 950 });
    // Reopened after a reload if it was open (and by the demo's workspace).
    restorer?.add(sidebar, sidebar.id);
    new PendingNotices(model, sidebar.title, review => {
      shell.activateById(sidebar.id);
      sidebar.reveal(review.id);
    });
  }
};

export default plugin;
